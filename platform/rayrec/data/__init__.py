"""Data: sources (MovieLens, event logs, the synthetic world), the Ray Data preprocessing
pipeline (``pipeline.run_preprocess``), the dataset contract (``schema``) and its readers
(``store``), and the one item/history text rendering (``text``)."""

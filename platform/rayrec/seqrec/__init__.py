"""The collaborative sequential retriever: a SASRec-style next-item model over item-id sequences.

config.py   the ``retriever`` config section
model.py    the network (causal self-attention, shared input/output item embeddings)
data.py     item-id sequences from the preprocessed Parquet (Ray Data) and their tensors
loop.py     the Ray Train worker loop (DDP, full or sampled softmax, validation, checkpoints)
trainer.py  ``run_retriever_training``: TorchTrainer, best checkpoint -> servable artifact
scorer.py   ``SeqRetriever``: user vectors and top-N over the catalog, the one scoring path of
            evaluation, index building, hard-negative mining and the retrieval deployment
mining.py   ranker training examples from the retriever's own top-N (hard negatives)
"""

"""Ray Train plumbing every trainer shares (ranker, retriever, item tower, generator).

Below the trainers and above models: worker settings and DeepSpeed's config (:mod:`.config`,
:mod:`.deepspeed`), checkpoint helpers (:mod:`.checkpoint`), the worker side of a run
(:mod:`.worker`), the driver side (:mod:`.driver`) and the training curve (:mod:`.history`).
"""

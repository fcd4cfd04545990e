"""The text-grounded item tower: an item's retriever vector from its text alone.

config.py   the ``tower`` config section
model.py    ``ItemTower``: encoder (+ LoRA) -> mean pool -> unit norm -> linear head into the
            retriever's item space; save/load (peft adapter + safetensors head, no pickle)
pairs.py    what it learns from: (user state, clicked item) pairs of the trained retriever
loop.py     the Ray Train + DeepSpeed ZeRO worker loop (the retriever's softmax, item vectors
            from text)
trainer.py  ``run_tower_training``: TorchTrainer, best checkpoint -> ``<run_dir>/tower``
vectors.py  ``new_item_vectors``: the one way any caller (evaluation, the retriever index,
            the endpoint's ``POST /items``) turns item text into retriever vectors
"""

"""explore: exploration policies with logged propensities, diversity re-ranking, bandit
experiments (simulation / semi-synthetic / replay), off-policy evaluation and the shared
serving state actor.

- ``policies``: make_policy(name, cfg, seed) -> Policy; Policy.select(...) -> Slate
- ``diversity``: mmr(...), dpp(...)
- ``state``: BanditStateActor, get_or_create_state_actor(...)
- ``ope``: join_events(...), evaluate(...)
- ``environments`` / ``experiment``: run_experiment(cfg) -> dict
"""

"""explore: exploration policies with logged propensities, diversity re-ranking, bandit
experiments (simulation / semi-synthetic / replay / worlds with arrivals), off-policy evaluation
and the shared serving state actor.

- ``linear``: BayesLinearHead (the posterior every contextual policy reads), ItemEffects
- ``features``: contextual_features(...): the model's representation the policies learn on
- ``policies``: make_policy(name, cfg, seed) -> Policy; Policy.select(...) -> Slate
- ``diversity``: mmr(...), dpp(...)
- ``state``: BanditStateActor, get_or_create_state_actor(...); encode_state / decode_state (npz + JSON)
- ``ope``: join_events(...), evaluate(...)
- ``environments`` / ``arrivals`` / ``experiment``: run_experiment(cfg) -> dict
"""

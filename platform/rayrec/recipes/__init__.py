"""Recipes: the jobs that orchestrate the library, one module each, above every library package.

  main        `rayrec main`: preprocess → index → train (retriever, tower, ranker) → evaluate
              → new items → serve with simulated traffic → bandit experiment → off-policy
  newitems    the new-item protocol (`rayrec new-items`)
  seeds       the headline evaluation over several seeds (`rayrec evaluate`, evaluate.seeds)
  feedback    the feedback loop (`rayrec feedback`): event log → fine-tune → compare → promote
  traffic     simulated clients against a running endpoint (the main job's serve stage)
  fidelity    the endpoint against evaluation (benchmarks/bench_endpoint_fidelity.py)
  logged_ope  off-policy estimates from the endpoint's own event log

A recipe may import any library package (data, models, seqrec, retrieval, itemtower, train,
evaluation, serving, explore, report); no library package imports a recipe.
"""

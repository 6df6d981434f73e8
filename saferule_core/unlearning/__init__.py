"""Unlearning: remove a forget set's influence from a trained learner (Safe-RULE and baselines).

One interface for every method: `api.unlearn(learner, dataset, forget_mask, method, config, ...)`;
the forget-request lifecycle around it (ledger, export, signed publish) is `job.run_forget_job`.
Modules: `config` (typed settings), `parts` (what unlearning reaches into a learner for),
`session` (split, samplers, progress, offline estimates), `safe_rule`, `baselines`, `sisa`,
`models` (model directories), `api`, `job`. Nothing is imported here: torch loads on use.
"""

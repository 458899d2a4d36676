"""Every attack by name, with what it needs from the model (its access) and what sets its length.

Access kinds (every attack's model is an attack target, `target(x, key) -> Deployed`:
target.py):
- gradient: `attack(target, x, y, key, **params) -> (x_adv, info)` differentiates the target;
- scores / labels: query attacks, which only see an `Oracle` (query/oracle.py) of the target
  answering with scores or labels, count their queries and cannot differentiate it;
- gradient attacks with `needs_detector` read the target's detector score and outputs too, and
  take what they must evade as `evasion=` (a target.Evasion);
- universal: `fn(target, x, key, **params) -> (v, info)` fits one perturbation on a set of
  (training) images; `apply(v, x)` adds it to any input.

`budget_param` names the parameter that sets how long an iterative attack runs (for the "more
steps" sanity check; None: the attack stops by itself or has no length). A query attack's Oracle
gets `query_budget(**params)` queries per example (default: the budget parameter's value), so
that scaling the budget parameter scales the queries allowed. `norm` is the attack's threat-model
norm, or the default of its `norm` parameter.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Optional

from defenses_jax.attacks import param_checks as checks
from defenses_jax.attacks.apgd import (APGD_LOSSES, apgd, apgd_stepped, apgd_targeted,
                                       apgd_targeted_stepped)
from defenses_jax.attacks.autoattack import AUTOATTACK_VERSIONS, autoattack
from defenses_jax.attacks.carlini_wagner import cw_l2, cw_l2_stepped
from defenses_jax.attacks.carlini_wagner_linf import cw_linf, cw_linf_stepped
from defenses_jax.attacks.deepfool import deepfool, deepfool_stepped
from defenses_jax.attacks.detector_evasion import cw_wb, feature_matching
from defenses_jax.attacks.gradient import bim, fgsm, ll_pgd, madry, pgd
from defenses_jax.attacks.jsma import JSMA_TARGETS, jsma, jsma_stepped
from defenses_jax.attacks.objectives import LOSSES
from defenses_jax.attacks.pair_evasion import PAIR_TARGETS, cw_pair, pair_apgd
from defenses_jax.attacks.query.gen_attack import gen_attack, gen_attack_query_budget
from defenses_jax.attacks.query.hop_skip_jump import (hop_skip_jump, hop_skip_jump_query_budget,
                                                      hop_skip_jump_stepped)
from defenses_jax.attacks.query.es_sign_pgd import es_sign_pgd, es_sign_pgd_query_budget
from defenses_jax.attacks.query.oracle import Oracle
from defenses_jax.attacks.query.random_search import random_search
from defenses_jax.attacks.query.square import LOSSES as SQUARE_LOSSES
from defenses_jax.attacks.query.square import square
from defenses_jax.attacks.query.zoo import SOLVERS, zoo, zoo_query_budget
from defenses_jax.attacks.target import Target
from defenses_jax.attacks.universal import apply_perturbation, uap
from defenses_jax.registry import Registry

ACCESS_KINDS = ("gradient", "scores", "labels", "universal")


@dataclasses.dataclass(frozen=True)
class AttackInfo:
  fn: Callable
  access: str
  norm: str
  budget_param: Optional[str] = None
  apply: Optional[Callable] = None  # Universal attacks: (v, x) -> the perturbed input.
  query_budget: Optional[Callable[..., int]] = None  # Query attacks: params -> Oracle budget.
  # Attacks on a classifier *and* its detector (detector_evasion.py): they take `evasion=` (the
  # detector's threshold, as the attacker knows it) and run only detector-aware.
  needs_detector: bool = False
  # Early-stopping attacks: (target, **params) -> attacks.stepped.SteppedAttack (a query
  # attack: (oracle, **params)), so that the slot runner (evaluation/slot_runner.py) refills an
  # example's place once it finishes.
  stepped: Optional[Callable] = None
  # Every parameter a config may set, with what it may be (param_checks.py): checked before
  # any compute, so that eps=-0.3 or steps=0 fails at once instead of reporting a number.
  params: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.access not in ACCESS_KINDS:
      raise ValueError(f"unknown attack access {self.access!r}; choose one of {ACCESS_KINDS}.")
    if (self.access == "universal") != (self.apply is not None):
      raise ValueError("a universal attack, and only one, needs `apply`.")
    if self.queries and self.query_budget is None and self.budget_param is None:
      raise ValueError("a query attack needs a budget parameter or a query_budget function.")
    if self.stepped is not None:  # The evaluation validates a config against fn's parameters.
      # Both take the attacked model (a target or an oracle) first; some also take `target`, the
      # targeting mode, so the model is skipped by position, not by name.
      params = lambda f, skip: set(list(inspect.signature(f).parameters)[1:]) - skip
      if params(self.fn, {"x", "y", "key"}) != params(self.stepped, set()):
        raise ValueError(f"{self.fn.__name__} and its stepped form take different parameters.")

  def check_params(self, params: dict) -> list[str]:
    """Sentences naming each of `params` the attack does not take or that is out of range."""
    return checks.problems(self.fn.__name__, self.params, params)

  @property
  def universal(self) -> bool:
    return self.access == "universal"

  @property
  def queries(self) -> bool:
    """A query attack: its first argument is an Oracle of the target, not the target."""
    return self.access in ("scores", "labels")

  def budget(self, params: dict) -> int:
    """The value of the budget parameter with these parameters (the attack's default if unset)."""
    return int(params.get(self.budget_param,
                          inspect.signature(self.fn).parameters[self.budget_param].default))

  def oracle_budget(self, params: dict) -> int:
    """The queries per example the Oracle of a query attack allows with these parameters."""
    if not self.queries:
      raise ValueError("only query attacks have an Oracle budget.")
    return int(self.query_budget(**params)) if self.query_budget else self.budget(params)

  def oracle(self, target: Target, params: dict, independent_examples: bool) -> Oracle:
    """What a query attack with these parameters gets of the target: an Oracle of its access
    kind and budget (independent_examples: see Oracle)."""
    return Oracle(target, self.access, self.oracle_budget(params),
                  independent_examples=independent_examples)

  def norm_of(self, params: dict) -> str:
    """The norm the attack runs in with these parameters."""
    return params.get("norm", self.norm)


# Declared parameters (see AttackInfo.params), shared where attacks share a meaning.
_EPS = {"eps": checks.POSITIVE}
_PGD_OPTIONS = {"norm": checks.NORM, "loss": checks.OneOf(LOSSES), "target": checks.TARGETS,
                "targets": checks.GIVEN, "restarts": checks.COUNT}
_CW = {"kappa": checks.NON_NEGATIVE, "binary_search_steps": checks.COUNT,
       "max_iterations": checks.COUNT, "learning_rate": checks.POSITIVE,
       "initial_const": checks.POSITIVE, "abort_early": checks.BOOL}
_APGD = {**_EPS, "norm": checks.NORM, "steps": checks.COUNT, "restarts": checks.COUNT,
         "rho": checks.PROBABILITY, "eot_iter": checks.COUNT}
_QUERY_TARGET = {"target": checks.QUERY_TARGETS, "targets": checks.GIVEN}
_CANDIDATES = checks.Range(low=2, integer=True)

ATTACKS = Registry("attack", {
    "fgsm": AttackInfo(fgsm, "gradient", "linf", params={
        **_EPS, "norm": checks.NORM, "loss": checks.OneOf(LOSSES), "target": checks.TARGETS,
        "targets": checks.GIVEN}),
    "bim": AttackInfo(bim, "gradient", "linf", budget_param="n2", params={
        **_EPS, "n1": checks.POSITIVE, "n2": checks.COUNT, **_PGD_OPTIONS}),
    "pgd": AttackInfo(pgd, "gradient", "linf", budget_param="steps", params={
        **_EPS, "step_size": checks.POSITIVE, "steps": checks.COUNT,
        "random_start": checks.BOOL, **_PGD_OPTIONS}),
    "madry": AttackInfo(madry, "gradient", "linf", budget_param="n2", params={
        **_EPS, "n1": checks.POSITIVE, "n2": checks.COUNT, **_PGD_OPTIONS}),
    "ll_pgd": AttackInfo(ll_pgd, "gradient", "linf", budget_param="steps", params={
        **_EPS, "step_size": checks.POSITIVE, "steps": checks.COUNT, "random_start": checks.BOOL,
        "norm": checks.NORM, "loss": checks.OneOf(LOSSES), "restarts": checks.COUNT}),
    "cw_l2": AttackInfo(cw_l2, "gradient", "l2", budget_param="max_iterations",
                        stepped=cw_l2_stepped, params={
                            **_CW, "target": checks.TARGETS, "targets": checks.GIVEN}),
    "cw_linf": AttackInfo(cw_linf, "gradient", "linf", budget_param="max_total_iterations",
                          stepped=cw_linf_stepped, params={
                              "kappa": checks.NON_NEGATIVE, "max_iterations": checks.COUNT,
                              "learning_rate": checks.POSITIVE,
                              "initial_const": checks.POSITIVE,
                              "largest_const": checks.POSITIVE,
                              "const_factor": checks.Range(low=1, low_open=True),
                              "decrease_factor": checks.Range(low=0, high=1, low_open=True,
                                                              high_open=True),
                              "max_total_iterations": checks.COUNT, "target": checks.TARGETS,
                              "targets": checks.GIVEN}),
    # Stops by itself (max_iter: a cap).
    "deepfool": AttackInfo(deepfool, "gradient", "l2", stepped=deepfool_stepped, params={
        "norm": checks.NORM, "overshoot": checks.NON_NEGATIVE, "max_iter": checks.COUNT,
        "candidates": _CANDIDATES, "box_aware": checks.BOOL,
        "tolerance": checks.NON_NEGATIVE}),
    # Stops by itself (gamma caps the features).
    "jsma": AttackInfo(jsma, "gradient", "l0", stepped=jsma_stepped, params={
        "theta": checks.Range(low=-1, high=1, nonzero=True), "gamma": checks.FRACTION,
        "target": checks.OneOf((None, *JSMA_TARGETS)), "targets": checks.GIVEN,
        "chunk_size": checks.COUNT}),
    "cw_wb": AttackInfo(cw_wb, "gradient", "l2", budget_param="phase2_iterations",
                        needs_detector=True, params={
                            "kappa": checks.NON_NEGATIVE, "phase1_iterations": checks.COUNT,
                            "phase1_binary_steps": checks.COUNT,
                            "phase2_iterations": checks.COUNT,
                            "phase2_binary_steps": checks.COUNT,
                            "phase1_learning_rate": checks.POSITIVE,
                            "phase2_learning_rate": checks.POSITIVE,
                            "initial_const": checks.POSITIVE, "abort_early": checks.BOOL}),
    "feature_matching": AttackInfo(feature_matching, "gradient", "linf", budget_param="steps",
                                   needs_detector=True, params={
                                       **_EPS, "steps": checks.COUNT,
                                       "step_size": checks.NON_NEGATIVE,  # 0: eps / 4.
                                       "num_targets": checks.COUNT,
                                       "random_start": checks.BOOL}),
    "cw_pair": AttackInfo(cw_pair, "gradient", "l2", budget_param="max_iterations",
                          needs_detector=True, params={
                              **_CW, "target": checks.OneOf(PAIR_TARGETS),
                              "eta1": checks.NON_NEGATIVE, "eta2": checks.NON_NEGATIVE}),
    "pair_apgd": AttackInfo(pair_apgd, "gradient", "linf", budget_param="steps",
                            needs_detector=True, params={
                                **_EPS, "norm": checks.NORM, "steps": checks.COUNT,
                                "num_targets": checks.COUNT, "restarts": checks.COUNT,
                                "margin_cap": checks.POSITIVE, "bpda": checks.BOOL,
                                "rho": checks.PROBABILITY}),
    # Restarts (and APGD-T's targets) stop once one fools the example.
    "apgd": AttackInfo(apgd, "gradient", "linf", budget_param="steps", stepped=apgd_stepped,
                       params={**_APGD, "loss": checks.OneOf(APGD_LOSSES)}),
    "apgd_t": AttackInfo(apgd_targeted, "gradient", "linf", budget_param="steps",
                         stepped=apgd_targeted_stepped, params={
                             **_APGD, "num_target_classes": checks.COUNT}),
    "autoattack": AttackInfo(autoattack, "gradient", "linf", budget_param="steps", params={
        **_EPS, "norm": checks.NORM, "version": checks.OneOf(AUTOATTACK_VERSIONS),
        "steps": checks.COUNT, "num_target_classes": checks.COUNT, "eot_iter": checks.COUNT,
        "square_queries": checks.COUNT}),
    "random_search": AttackInfo(random_search, "labels", "linf", budget_param="max_queries",
                                params={**_EPS, "norm": checks.NORM,
                                        "max_queries": checks.COUNT}),
    # HopSkipJump's Oracle budget is its schedule's most (an upper bound for any input size).
    # Examples stop early: no adversarial start, out of budget, or (eps) success settled.
    "hop_skip_jump": AttackInfo(hop_skip_jump, "labels", "l2", budget_param="steps",
                                query_budget=hop_skip_jump_query_budget,
                                stepped=hop_skip_jump_stepped, params={
                                    "norm": checks.NORM, "steps": checks.COUNT,
                                    "gamma": checks.POSITIVE, "init_evals": checks.COUNT,
                                    "max_evals": checks.COUNT,
                                    "max_init_queries": checks.COUNT,
                                    "max_step_halvings": checks.Range(low=0, integer=True),
                                    "max_search_steps": checks.Range(low=0, integer=True),
                                    "chunk": checks.COUNT,
                                    "margin": checks.Range(low=0, high=1, high_open=True),
                                    "eps": checks.Range(low=0, low_open=True, optional=True),
                                    "stop_within_eps": checks.BOOL, "starts": checks.GIVEN,
                                    "max_queries": checks.OPTIONAL_COUNT, **_QUERY_TARGET}),
    "gen_attack": AttackInfo(gen_attack, "scores", "linf", budget_param="max_steps",
                             query_budget=gen_attack_query_budget, params={
                                 **_EPS, "population": checks.Range(low=2, integer=True),
                                 "mutation_rate": checks.PROBABILITY,
                                 "alpha": checks.NON_NEGATIVE, "temperature": checks.POSITIVE,
                                 "max_steps": checks.COUNT, "adaptive": checks.BOOL,
                                 "return_history": checks.BOOL, **_QUERY_TARGET}),
    "square": AttackInfo(square, "scores", "linf", budget_param="max_queries", params={
        **_EPS, "norm": checks.NORM, "max_queries": checks.COUNT, "p_init": checks.FRACTION,
        "loss": checks.OneOf(SQUARE_LOSSES), "rescale_schedule": checks.BOOL,
        "attack_mask": checks.GIVEN, **_QUERY_TARGET}),
    "es_sign_pgd": AttackInfo(es_sign_pgd, "scores", "linf", budget_param="steps",
                              query_budget=es_sign_pgd_query_budget, params={
                                  **_EPS, "steps": checks.COUNT, "step_size": checks.POSITIVE,
                                  "sigma": checks.POSITIVE, "samples": checks.GIVEN,
                                  "boundaries": checks.GIVEN, "chunk": checks.COUNT,
                                  **_QUERY_TARGET}),
    "zoo": AttackInfo(zoo, "scores", "l2", budget_param="max_iterations",
                      query_budget=zoo_query_budget, params={
                          **{k: v for k, v in _CW.items() if k != "abort_early"},
                          "coordinates": checks.COUNT, "solver": checks.OneOf(SOLVERS),
                          "h": checks.POSITIVE, "early_stop_iters": checks.OPTIONAL_COUNT,
                          "use_log": checks.BOOL, "use_tanh": checks.BOOL,
                          "reduced_size": checks.OPTIONAL_COUNT,
                          "importance_sampling": checks.BOOL,
                          "max_queries": checks.OPTIONAL_COUNT, **_QUERY_TARGET}),
    "uap": AttackInfo(uap, "universal", "linf", budget_param="max_passes",
                      apply=apply_perturbation, params={
                          **_EPS, "norm": checks.NORM,
                          "delta": checks.Range(low=0, high=1, high_open=True),
                          "max_passes": checks.COUNT, "overshoot": checks.NON_NEGATIVE,
                          "max_iter_df": checks.COUNT, "candidates": _CANDIDATES,
                          "batch_size": checks.COUNT}),
})


def attack_info(name: str) -> AttackInfo:
  return ATTACKS.lookup(name)


def get_attack(name: str) -> Callable:
  return ATTACKS.lookup(name).fn

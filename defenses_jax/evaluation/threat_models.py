"""Attack specifications from a config and the threat model each attack works under.

Threat models (papers 002 appendix D, 003 section 2.2):
- white_box: the attacker differentiates the defense as deployed (`defense.deployed`);
- gray_box: the attacker has the underlying network but not the defense (its raw logits);
- adaptive: an attack built for this defense (its 'adaptive' `attack_surfaces`, if it has one);
(each defense says what its attacker differentiates: `defense.attack_target`)
- transfer: examples are crafted white-box on a *source* experiment (a substitute, e.g. the
  unsecured classifier or a distilled proxy) and then fed to the defense.
Universal attacks fit one perturbation on training images of the experiment they are crafted on
(evaluation/universal.py) and add it to every test image.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any, Callable, NamedTuple, Optional

from defenses_jax import attacks as attacks_lib
from defenses_jax import config_schema
from defenses_jax.config import ATTACK_ENTRY
from defenses_jax.defenses.base import Network, white_box_surfaces
from defenses_jax.errors import ConfigError
from defenses_jax.experiment import variables

DEFAULT_FIT_EXAMPLES = 1000  # Training images a universal attack is fitted on, by default.


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One attack of config.eval.attacks, read and checked: the entry's fields (config.ATTACK_ENTRY
  says what each is for) with the defaults applied, under its config key."""
  key: str  # Config key, e.g. "pgd".
  label: str
  attack: str  # Name in attacks.ATTACKS.
  threat_model: str
  params: dict
  source_experiment: str = ""
  eot_samples: int = 1
  fit_examples: int = 0  # Universal attacks: the default applied (DEFAULT_FIT_EXAMPLES).
  detector_aware: bool = False
  detector_weight: float = 1.0
  detector_fpr: float = 0.0
  num_examples: int = 0
  surface: str = ""
  # Params that differ from those the label was written for (a command-line override such as
  # --config.eval.attacks.cw.params.max_iterations=5): {name: [label's value, value run]}. The
  # label then says so, and tables do not compare the row with the paper's number.
  overridden: dict = dataclasses.field(default_factory=dict)

  @property
  def info(self) -> attacks_lib.AttackInfo:
    return attacks_lib.attack_info(self.attack)

  @property
  def fn(self) -> Callable:
    return self.info.fn

  def with_params(self, **changes) -> "AttackSpec":
    return dataclasses.replace(self, params={**self.params, **changes})


def parse_attack_specs(attacks_config, defense, has_detector: bool = False) -> list[AttackSpec]:
  """Validates every attack of `config.eval.attacks` before any compute is spent
  (`has_detector`: the evaluation fits a detector, which detector-aware attacks need)."""
  specs = []
  for key, entry in attacks_config.items():
    fields, problems = config_schema.entry_values(ATTACK_ENTRY, entry)
    if problems:
      raise ConfigError(f"eval.attacks.{key}: " + "; ".join(problems) + ".")
    name = key if fields["attack"] is None else fields["attack"]
    if name not in attacks_lib.ATTACKS:
      raise ConfigError(f"eval.attacks.{key}: unknown attack {name!r}; choose one of "
                       f"{', '.join(sorted(attacks_lib.ATTACKS))}.")
    info = attacks_lib.attack_info(name)
    params = dict(fields["params"])
    problems = info.check_params(params)
    if problems:
      raise ConfigError(f"eval.attacks.{key}: " + "; ".join(problems) + ".")
    signature = inspect.signature(info.fn).parameters
    required = {p for p in info.params if p in signature
                and signature[p].default is inspect.Parameter.empty}
    if required - set(params):
      raise ConfigError(f"eval.attacks.{key}: attack {name!r} needs "
                        f"{sorted(required - set(params))} in its params (it has no default).")
    universal = info.universal
    fit_examples = fields["fit_examples"] or (DEFAULT_FIT_EXAMPLES if universal else 0)
    if universal != (fit_examples > 0):
      raise ConfigError(f"eval.attacks.{key}: fit_examples (training images a universal "
                       "perturbation is fitted on) is only for a universal attack.")
    threat = fields["threat_model"]
    if threat == "adaptive" and "adaptive" not in defense.attack_surfaces():
      raise ConfigError(f"eval.attacks.{key}: defense {defense.name!r} defines no adaptive attack.")
    source = fields["source_experiment"]
    if (threat == "transfer") != bool(source):
      raise ConfigError(f"eval.attacks.{key}: a transfer attack needs source_experiment (the "
                       "substitute's experiment name in the same workdir), and only it does.")
    eot_samples = fields["eot_samples"]
    if eot_samples > 1 and not defense.randomised:
      raise ConfigError(f"eval.attacks.{key}: eot_samples above 1 is only for a randomised "
                       f"defense ({defense.name!r} is deterministic).")
    detector_aware = fields["detector_aware"]
    access = info.access
    if detector_aware and not (has_detector and (
        (threat in ("white_box", "transfer") and access == "gradient")
        or (threat == "white_box" and access in ("scores", "labels")))):
      raise ConfigError(f"eval.attacks.{key}: a detector-aware attack is a white-box (or "
                       "transfer) gradient attack, or a query attack (its Oracle answers "
                       "with the system's decision: rejected inputs count as the true class), "
                       "on a deployed system with a detector (eval.detection.detector).")
    if detector_aware and access in ("scores", "labels") and defense.randomised:
      raise ConfigError(f"eval.attacks.{key}: a detector-aware query attack needs a "
                       f"deterministic defense; {defense.name!r} is randomised.")
    if info.needs_detector and not detector_aware:
      raise ConfigError(f"eval.attacks.{key}: {name!r} attacks a classifier and its detector: "
                       "set detector_aware=True (and eval.detection.detector).")
    if info.needs_detector and defense.randomised:
      raise ConfigError(f"eval.attacks.{key}: {name!r} needs a deterministic defense; "
                       f"{defense.name!r} is randomised (use a detector-aware gradient attack "
                       "with eot_samples instead).")
    if fields["detector_fpr"] and not detector_aware:
      raise ConfigError(f"eval.attacks.{key}: detector_fpr (the threshold the attacker evades, "
                       "as a clean false-positive rate) is only for a detector-aware attack.")
    surface = fields["surface"]
    # A transfer attack's surface is the source's (crafted there as a white-box attack); a
    # source without it fails when its target is built.
    if surface and ((threat == "white_box" and surface not in white_box_surfaces(defense))
                    or threat not in ("white_box", "transfer") or detector_aware or universal):
      raise ConfigError(f"eval.attacks.{key}: surface {surface!r} must be one of defense "
                       f"{defense.name!r}'s attack surfaces {white_box_surfaces(defense)}, "
                       "for a white-box (or transfer) attack that is neither detector-aware "
                       "nor universal.")
    overridden = _overridden(fields["label_params"], params)
    label = key if fields["label"] is None else fields["label"]
    if overridden:
      label += " [run with " + ", ".join(f"{k}={v[1]}" for k, v in overridden.items()) + "]"
    specs.append(AttackSpec(key=key, label=label, attack=name, overridden=overridden,
                            threat_model=threat, params=params, source_experiment=source,
                            eot_samples=eot_samples, fit_examples=fit_examples,
                            detector_aware=detector_aware,
                            detector_weight=float(fields["detector_weight"]),
                            detector_fpr=float(fields["detector_fpr"]),
                            num_examples=fields["num_examples"], surface=surface))
  return specs


def _overridden(label_params, params: dict) -> dict:
  """{param: [value the label describes, value run]} for each param that differs."""
  if label_params is None:  # A hand-written entry: its label is taken as it is.
    return {}
  norm = lambda v: json.loads(json.dumps(v))  # Tuples and lists (config.json) compare equal.
  label_params = dict(label_params)
  return {k: [label_params.get(k), params.get(k)] for k in sorted(set(label_params) | set(params))
          if norm(label_params.get(k)) != norm(params.get(k))}


class DetectorTarget(NamedTuple):
  """What a detector-aware attacker evades: the fitted detector at its threshold."""
  detector: Any
  threshold: float
  weight: float = 1.0

  def evasion(self, detector_state) -> attacks_lib.Evasion:
    """What the attacker knows of it, with the detector's fitted state."""
    return attacks_lib.Evasion(self.threshold, self.weight,
                               lambda: self.detector.anchor_embeddings(detector_state))


@dataclasses.dataclass(frozen=True)
class TargetBuilder:
  """The attack target an attacker under `threat_model` differentiates or queries (transfer: the
  white-box target of the source it is crafted on), built from the trained parameters inside
  the compiled attack: `build(params, batch_stats[, labels, detector_state])`, averaged over
  `eot_samples` draws of a randomised defense. With `evade`, the deployed system with its
  detector folded into the class scores (wrappers.rejecting: label-aware, so it needs the
  attacked batch's labels); `system` gives it unfolded, for the attacks that read the detector
  themselves (with `evade.evasion`)."""
  threat_model: str
  model: Any
  defense: Any
  eot_samples: int = 1
  evade: Optional[DetectorTarget] = None
  surface: str = ""

  @property
  def independent_examples(self) -> bool:
    """The target is deterministic and treats the rows of its batch apart (see query.Oracle):
    neither randomised (a randomised defense's deployed system or surfaces, or EOT) nor
    detector-aware (label-aware)."""
    randomised = self.eot_samples > 1 or (self.defense.randomised
                                          and self.threat_model in ("white_box", "transfer"))
    return self.evade is None and not randomised

  def _network(self, params, batch_stats) -> Network:
    return Network(self.model, variables(params, batch_stats))

  def system(self, params, batch_stats, detector_state) -> attacks_lib.Target:
    """The deployed system with the fitted detector (`evade`), as it is."""
    return self.defense.attack_target(self.threat_model, self._network(params, batch_stats),
                                      self.surface, self.evade.detector.scorer(detector_state))

  def __call__(self, params, batch_stats, labels=None, detector_state=None
               ) -> attacks_lib.Target:
    if self.evade is None:
      target = self.defense.attack_target(self.threat_model,
                                          self._network(params, batch_stats), self.surface)
    else:
      if labels is None:
        raise ValueError("a detector-aware attack target needs the attacked batch's labels.")
      target = attacks_lib.rejecting(self.system(params, batch_stats, detector_state),
                                     self.evade.evasion(detector_state), labels)
    return attacks_lib.eot(target, self.eot_samples) if self.eot_samples > 1 else target

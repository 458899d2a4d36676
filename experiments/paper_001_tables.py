"""Paper 001's Tables 3, 4 and 5 as suite tables (cell syntax: see defenses_jax/suites/runner.py)."""

_METHODS = ("vanilla", "free_adv", "atda", "sim_adv", "bim_adv", "madry_adv")
_COLUMNS = ("Vanilla", "Free-Adv (m=10)", "ATDA", "SIM(10,20)-Adv", "BIM(10,30)-Adv",
            "Madry(10,30)-Adv")
# Table 3, rows clean / FGSM / BIM / Madry, columns as _METHODS.
_T3 = {
    "mnist": ((0.9884, 0.9872, 0.9755, 0.9900, 0.9901, 0.9901),
              (0.0446, 0.9594, 0.9637, 0.9657, 0.9656, 0.9703),
              (0.0094, 0.0156, 0.4234, 0.9255, 0.9383, 0.9404),
              (0.0087, 0.0070, 0.3314, 0.9289, 0.9415, 0.9429)),
    "fashion_mnist": ((0.9164, 0.8945, 0.8464, 0.8896, 0.8619, 0.8714),
                      (0.0607, 0.8569, 0.8359, 0.7978, 0.7834, 0.7582),
                      (0.0596, 0.0739, 0.2581, 0.6593, 0.6971, 0.6459),
                      (0.0455, 0.0399, 0.2379, 0.6688, 0.7058, 0.6972)),
    "cifar10": ((0.9174, 0.7396, 0.8911, 0.7721, 0.8083, 0.8108),
                (0.1789, 0.4896, 0.6577, 0.5412, 0.5632, 0.5608),
                (0.0556, 0.3868, 0.0802, 0.4369, 0.4677, 0.4673),
                (0.0482, 0.3863, 0.0832, 0.4378, 0.4680, 0.4674)),
}
# Table 4: SIM-Adv at learning rates 1e-3 and 1e-4 (FGSM, BIM(10,40), Madry(10,40)).
_T4 = {
    "mnist": ((0.9387, 0.8993, 0.9011), (0.9657, 0.9255, 0.9289)),
    "fashion_mnist": ((0.7468, 0.6107, 0.6146), (0.7978, 0.6593, 0.6688)),
    "cifar10": ((None,) * 3, (None,) * 3),
}
# Table 5: total training time in seconds (RTX 2070): Free-Adv, ATDA, SIM-Adv, BIM-Adv.
_T5 = {"mnist": (234.75, 319.56, 293.22, 866.76), "fashion_mnist": (308.5, 422.4, 391.2, 1159.2),
       "cifar10": (25923.5, 33011.6, 26692.4, 111372.6)}


def paper_001_tables(dataset: str, name, lr_members: dict) -> dict:
  """`name(method)` -> member name; `lr_members` {learning rate: SIM-Adv member} for Table 4."""
  iterative = "BIM(4,20)" if dataset == "cifar10" else "BIM(10,40)"
  madry = "Madry(4,20)" if dataset == "cifar10" else "Madry(10,40)"
  rows3 = tuple(
      (label, tuple(f"{name(m)}:{key}" for m in _METHODS), paper)
      for label, key, paper in zip(("Original", "FGSM", iterative, madry),
                                   ("clean", "fgsm", "bim", "madry"), _T3[dataset]))
  rows3 += (("PGD-100, 5 restarts (beyond the paper)",
             tuple(f"{name(m)}:pgd_restarts" for m in _METHODS), (None,) * 6),)
  rows4 = tuple(
      (f"learning rate {rate:g}", tuple(f"{lr_members[rate]}:{key}"
                                        for key in ("fgsm", "bim", "madry")), paper)
      for rate, paper in zip((1e-3, 1e-4), _T4[dataset]))
  timed = ("free_adv", "atda", "sim_adv", "bim_adv")
  bim_seconds = _T5[dataset][3]
  rows5 = tuple(
      (label, (f"{name(m)}:time", f"{name(m)}:time_ratio:{name('bim_adv')}"),
       (seconds, seconds / bim_seconds))
      for label, m, seconds in zip(("Free-Adv", "ATDA", "SIM-Adv", "BIM-Adv"), timed,
                                   _T5[dataset]))
  return {
      "order": ("table_3", "table_4", "table_5"),
      "table_3": dict(title="Table 3: test accuracy (white-box, L-inf)", columns=_COLUMNS,
                      note="Each method as trained by its member; the last row is ours.",
                      rows=rows3),
      "table_4": dict(title="Table 4: SIM(10,20)-Adv at two learning rates (Adam)",
                      columns=("FGSM", iterative, madry), row_header="Training", rows=rows4),
      "table_5": dict(
          title="Table 5: total training time",
          note="Ours: steady-state seconds per step x steps, same run and machine for all "
               "methods (compilation and evaluation excluded). Paper: an RTX 2070 GPU.",
          columns=("Total training time", "Ratio to BIM-Adv"), row_header="Method",
          formats=("seconds", "ratio"), rows=rows5),
  }

"""Paper 000 (Target Training): the paper's numbers, stored once under named columns, and the
suite's tables (which member and result each cell shows; cell syntax: defenses_jax/suites/runner.py).
"""

from experiments.common import table, table_row

# Columns.
TT, AT, UNSECURED = "target_training", "adversarial_training", "unsecured"
TT_SUM, TT_DEPLOYED = "target_training_sum", "target_training_deployed"
PAPER_PROTOCOL, TRANSFER = "paper_protocol", "transfer"

# The paper's numbers as fractions: dataset -> table -> row -> column -> number. A column absent
# from a row: the paper has no entry there.
PAPER = {
    "mnist": {
        "table_1": {  # Attacks that minimise the perturbation.
            "cw_l2_k0": {TT: 0.963, AT: 0.050, UNSECURED: 0.008},
            "deepfool": {TT: 0.949, AT: 0.052, UNSECURED: 0.013},
            "zoo": {TT: 0.930, UNSECURED: 0.960},
            "uap": {TT: 0.986, AT: 0.584, UNSECURED: 0.421},
            "cw_linf_k0": {TT: 0.963, AT: 0.801, UNSECURED: 0.821}},
        "table_2": {  # Attacks that do not; each model trained with the attack it faces.
            "cw_l2_k40": {TT: 0.980, AT: 0.980, UNSECURED: 0.007},
            "pgd": {TT: 0.923, AT: 0.917, UNSECURED: 0.797},
            "fgsm": {TT: 0.980, AT: 0.984, UNSECURED: 0.100}},
        "table_3": {  # Transfer from the unsecured classifier.
            "cw_l2_k0": {TT: 0.783, UNSECURED: 0.008},
            "cw_linf_k0": {TT: 0.935, UNSECURED: 0.821},
            "deepfool": {TT: 0.965, UNSECURED: 0.013},
            "cw_l2_k40": {TT: 0.951, UNSECURED: 0.007},
            "pgd": {TT: 0.922, UNSECURED: 0.797}},
        "table_4": {  # Adaptive attacks on the sum layer.
            "cw_l2_k0": {TT_SUM: 0.957, UNSECURED: 0.008},
            "deepfool": {TT_SUM: 0.949, UNSECURED: 0.013},
            "cw_linf_k0": {TT_SUM: 0.957, UNSECURED: 0.821},
            "cw_l2_k40": {TT_SUM: 0.939, UNSECURED: 0.007},
            "pgd": {TT_SUM: 0.579, UNSECURED: 0.797}},
        "table_7": {  # Clean accuracy, by the attack used in training.
            "none": {TT: 0.986, UNSECURED: 0.991},
            "cw40": {TT: 0.980, AT: 0.980, UNSECURED: 0.991},
            "pgd": {TT: 0.983, AT: 0.984, UNSECURED: 0.991},
            "fgsm": {TT: 0.986, AT: 0.986, UNSECURED: 0.991}},
    },
    "cifar10": {
        "table_1": {
            "cw_l2_k0": {TT: 0.856, AT: 0.228, UNSECURED: 0.088},
            "deepfool": {TT: 0.866, AT: 0.240, UNSECURED: 0.092},
            "zoo": {TT: 0.890, UNSECURED: 0.815},
            "uap": {TT: 0.868, AT: 0.425, UNSECURED: 0.172},
            "cw_linf_k0": {TT: 0.842, AT: 0.214, UNSECURED: 0.420}},
        "table_2": {
            "cw_l2_k40": {TT: 0.777, AT: 0.774, UNSECURED: 0.085},
            "pgd": {TT: 0.763, AT: 0.762, UNSECURED: 0.327},
            "fgsm": {TT: 0.721, AT: 0.718, UNSECURED: 0.118}},
        "table_3": {
            "cw_l2_k0": {TT: 0.699, UNSECURED: 0.088},
            "cw_linf_k0": {TT: 0.766, UNSECURED: 0.420},
            "deepfool": {TT: 0.748, UNSECURED: 0.092},
            "cw_l2_k40": {TT: 0.347, UNSECURED: 0.085},
            "pgd": {TT: 0.368, UNSECURED: 0.327}},
        "table_4": {
            "cw_l2_k0": {TT_SUM: 0.832, UNSECURED: 0.088},
            "deepfool": {TT_SUM: 0.866, UNSECURED: 0.092},
            "cw_linf_k0": {TT_SUM: 0.208, UNSECURED: 0.420},
            "cw_l2_k40": {TT_SUM: 0.756, UNSECURED: 0.085},
            "pgd": {TT_SUM: 0.071, UNSECURED: 0.327}},
        "table_7": {
            "none": {TT: 0.867, UNSECURED: 0.843},
            "cw40": {TT: 0.777, AT: 0.774, UNSECURED: 0.843},
            "pgd": {TT: 0.763, AT: 0.769, UNSECURED: 0.843},
            "fgsm": {TT: 0.776, AT: 0.766, UNSECURED: 0.843}},
    },
}

ATTACK_LABELS = {"cw_l2_k0": "CW-L2 (kappa=0)", "deepfool": "DeepFool", "zoo": "ZOO",
                 "uap": "UAP", "cw_linf_k0": "CW-Linf (kappa=0)",
                 "cw_l2_k40": "CW-L2 (kappa=40)", "pgd": "PGD", "fgsm": "FGSM (eps=0.3)"}
TRAINING_LABELS = {"none": "none (Algorithm 1)", "cw40": "CW-L2 (kappa=40)", "pgd": "PGD",
                   "fgsm": "FGSM (eps=0.3)"}
# The Target Training member each attack's rows use: attacks that minimise the perturbation face
# Algorithm 1; the others face Algorithm 3 trained with the same attack (paper section 4).
TT_MEMBER_FOR = {"cw_l2_k0": "tt", "deepfool": "tt", "cw_linf_k0": "tt", "uap": "tt", "zoo": "tt",
                 "cw_l2_k40": "tt_cw40", "pgd": "tt_pgd", "fgsm": "tt_fgsm"}
TRAINING_ATTACK = {"cw_l2_k40": "cw40", "pgd": "pgd", "fgsm": "fgsm"}
# The threat models (result key suffixes) Algorithm 1 faces each attack under, beyond "deployed".
# UAP is fitted once per model and threat model, so it skips the costly transfer and sum rows.
MIN_PERTURBATION = ("cw_l2_k0", "deepfool", "cw_linf_k0")
THREATS_OF = {**{key: ("paper", "transfer", "sum", "deployed") for key in MIN_PERTURBATION},
              "uap": ("paper", "deployed")}


def unsecured_numbers(dataset: str) -> dict:
  """The paper's numbers for the unsecured classifier: {'clean': ..., <attack>: ...}."""
  paper = PAPER[dataset]
  numbers = {"clean": paper["table_7"]["none"][UNSECURED]}
  for table_id in ("table_1", "table_2"):
    numbers.update({key: row[UNSECURED] for key, row in paper[table_id].items()})
  return numbers


def paper_000_tables(dataset: str, scale: str, uap_radius: str, zoo_label: str = "ZOO") -> dict:
  paper = PAPER[dataset]
  name = lambda prefix: f"{prefix}_{dataset}_{scale}"
  tt = lambda key, suffix: f"{name(TT_MEMBER_FOR[key])}:{key}_{suffix}"
  std = lambda key: f"{name('standard')}:{key}"

  def table_1_row(key):
    numbers = paper["table_1"][key]  # ZOO: the paper has no Adversarial Training number.
    return table_row(ATTACK_LABELS[key], numbers,
                     **{TT: tt(key, "paper"),
                        AT: f"{name('at_pgd')}:{key}_wb" if AT in numbers else "",
                        UNSECURED: std(key)})

  def table_7_row(key):
    trained = "tt" if key == "none" else f"tt_{key}"
    return table_row(TRAINING_LABELS[key], paper["table_7"][key],
                     **{TT: f"{name(trained)}:clean",
                        AT: "" if key == "none" else f"{name('at_' + key)}:clean",
                        UNSECURED: f"{name('standard')}:clean"})

  table_4_rows = [table_row(ATTACK_LABELS[key], numbers,
                            **{TT_SUM: tt(key, "sum"), UNSECURED: std(key),
                               TT_DEPLOYED: tt(key, "deployed")})
                  for key, numbers in paper["table_4"].items()]
  table_4_rows += [
      table_row(ATTACK_LABELS["fgsm"], {}, **{TT_SUM: tt("fgsm", "sum"), UNSECURED: std("fgsm"),
                                              TT_DEPLOYED: tt("fgsm", "deployed")}),
      table_row("PGD, targeted at the least likely class", {},
                **{TT_SUM: "", UNSECURED: "", TT_DEPLOYED: f"{name('tt_pgd')}:ll_pgd_deployed"})]
  beyond_rows = [
      table_row(ATTACK_LABELS[key], {}, **{
          column: f"{name('tt')}:{key}_{suffix}" if suffix in THREATS_OF.get(key, ("deployed",))
          else ""
          for column, suffix in ((PAPER_PROTOCOL, "paper"), (TRANSFER, "transfer"),
                                 (TT_SUM, "sum"), (TT_DEPLOYED, "deployed"))})
      for key in ("cw_l2_k0", "deepfool", "cw_linf_k0", "uap", "cw_l2_k40", "pgd", "fgsm")]
  models = [("Unsecured", "standard", "autoattack"),
            ("Target Training, Algorithm 1", "tt", "autoattack_deployed")]
  models += [(f"Target Training, Algorithm 3 ({TRAINING_LABELS[a]})", f"tt_{a}",
              "autoattack_deployed") for a in ("cw40", "pgd", "fgsm")]
  models += [(f"Adversarial Training ({TRAINING_LABELS[a]})", f"at_{a}", "autoattack_wb")
             for a in ("cw40", "pgd", "fgsm")]
  autoattack_rows = [table_row(label, {}, robust=f"{name(member)}:{key}")
                     for label, member, key in models]
  return {
      "order": ("table_1", "table_2", "table_3", "table_4", "table_7",
                "beyond_threat_models", "beyond_autoattack"),
      "beyond_autoattack": table(
          "Beyond the paper: AutoAttack-style worst case on every model",
          (("robust", "Robust accuracy"),), autoattack_rows, row_header="Model",
          note="White-box on each model as deployed (Target Training: the deployed classifier "
               "log(p_i + p_{i+k})), at the budget of the paper's PGD. The members are APGD-CE "
               "and APGD-T, then Square on the points still robust (no FAB-T): a lower bound on what the full "
               "AutoAttack finds."),
      "table_1": table(
          "Table 1: attacks that minimise the perturbation (Target Training without "
          "adversarial examples)",
          ((TT, "Target Training"), (AT, "Adversarial Training"), (UNSECURED, "Unsecured")),
          [table_1_row(key) for key in paper["table_1"]],
          note="Target Training: Algorithm 1, attacked under the paper's protocol (the "
               "2k-output network, true label). Adversarial Training: the PGD-trained model (the "
               "paper does not say which of its adversarially trained models this column uses). "
               f"UAP: {uap_radius} (the paper gives no radius; ART's default, which it used, "
               "is eps = 10: no constraint at all on [0, 1] images). "
               f"{zoo_label}: a query attack on the class scores (Target Training: the "
               "2k outputs, as the paper's protocol)."),
      "table_2": table(
          "Table 2: attacks that do not minimise the perturbation (each model trained with "
          "the attack it is tested on)",
          ((TT, "Target Training"), (AT, "Adversarial Training"), (UNSECURED, "Unsecured")),
          [table_row(ATTACK_LABELS[key], numbers, **{
              TT: tt(key, "paper"), AT: f"{name('at_' + TRAINING_ATTACK[key])}:{key}_wb",
              UNSECURED: std(key)}) for key, numbers in paper["table_2"].items()],
          note="Target Training: Algorithm 3, paper protocol. Adversarial Training: Algorithm 2."),
      "table_3": table(
          "Table 3: transfer from the unsecured classifier",
          ((TT, "Target Training"), (UNSECURED, "Unsecured")),
          [table_row(ATTACK_LABELS[key], numbers,
                     **{TT: tt(key, "transfer"), UNSECURED: std(key)})
           for key, numbers in paper["table_3"].items()],
          note="Examples crafted white-box on the unsecured classifier, tested on Target "
               "Training (Algorithm 1 for the first three rows, Algorithm 3 trained with the "
               "row's attack for the others)."),
      "table_4": table(
          "Table 4: adaptive attacks",
          ((TT_SUM, "Target Training, paper adaptive"), (UNSECURED, "Unsecured"),
           (TT_DEPLOYED, "Target Training, deployed (beyond the paper)")),
          table_4_rows,
          note="Paper adaptive: crafted on the paper's sum layer z_i + z_{i+k}, tested on the "
               "deployed classifier. Deployed (beyond the paper, no paper numbers): crafted on "
               "the deployed classifier's own scores log(p_i + p_{i+k})."),
      "table_7": table(
          "Table 7: clean accuracy",
          ((TT, "Target Training"), (AT, "Adversarial Training"), (UNSECURED, "No defense")),
          [table_7_row(key) for key in paper["table_7"]],
          note="Rows: the attack whose adversarial examples were used in training.",
          row_header="Training attack"),
      "beyond_threat_models": table(
          "Beyond the paper: Target Training (Algorithm 1) under each threat model",
          ((PAPER_PROTOCOL, "Paper protocol"), (TRANSFER, "Transfer"),
           (TT_SUM, "Paper adaptive"), (TT_DEPLOYED, "Deployed")),
          beyond_rows,
          note="The same model and attack, four attackers: the paper's protocol, transfer from "
               "the unsecured classifier, the paper's sum layer, and the deployed classifier."),
  }


def paper_000_findings(dataset: str, scale: str) -> tuple:
  """The README's findings (defenses_jax/suites/findings.py): Target Training's claims under
  PGD (Algorithm 3, Table 2) and CW-L2 (Algorithm 1, Table 1), each measured under the paper's
  protocol and under the attacks on the classifier as deployed."""
  name = lambda prefix: f"{prefix}_{dataset}_{scale}"
  table_2, table_1 = PAPER[dataset]["table_2"], PAPER[dataset]["table_1"]
  tt_pgd, tt = name("tt_pgd"), name("tt")
  return (
      {"defense": "Target Training (Algorithm 3, PGD)", "member": tt_pgd,
       "quantity": "robust accuracy", "claim": table_2["pgd"][TT],
       "claim_source": f"Table 2, PGD, {dataset}", "protocol": f"{tt_pgd}:pgd_paper",
       "strongest": (f"{tt_pgd}:pgd_deployed", f"{tt_pgd}:ll_pgd_deployed",
                     f"{tt_pgd}:autoattack_deployed")},
      {"defense": "Target Training (Algorithm 1)", "member": tt,
       "quantity": "robust accuracy", "claim": table_1["cw_l2_k0"][TT],
       "claim_source": f"Table 1, CW-L2 (kappa=0), {dataset}",
       "protocol": f"{tt}:cw_l2_k0_paper",
       "strongest": (f"{tt}:cw_l2_k0_deployed", f"{tt}:pgd_deployed")})

"""Paper 003 (collaborative multi-task training): the paper's numbers, stored once under named
columns, and the suite's Tables 3-5, section 4.5's benign numbers and the adaptive table beyond
the paper (cell syntax: defenses_jax/suites/runner.py)."""

from experiments.common import detector_finding, table, table_row

ATTACKS = ("fgs", "igs", "deepfool", "cw")
TITLES = {"fgs": "FGS", "igs": "IGS", "deepfool": "DeepFool", "cw": "C&W L2 (kappa 40)"}

# The paper's numbers: dataset -> table -> row -> column -> number.
PAPER = {
    "mnist": {
        "table_3": {
            "black_box_original": {"fgs": 0.343, "igs": 0.354, "deepfool": 0.341, "cw": 0.126},
            "black_box_defended": {"fgs": 0.962, "igs": 0.958, "deepfool": 0.963, "cw": 0.126},
            "gray_box_original": {"fgs": 0.017, "igs": 0.0, "deepfool": 0.0, "cw": 0.0},
            "gray_box_defended": {"fgs": 0.990, "igs": 0.989, "deepfool": 0.985, "cw": 0.001}},
        "table_4": {"black_box": {"fgs": 0.991, "igs": 0.952, "deepfool": 0.977},
                    "gray_box": {"fgs": 0.987, "igs": 0.944, "deepfool": 0.952}},
        # Table 5 (MNIST only), by kappa: success rate of C&W (Original) and of equation 10's
        # combined-loss C&W (Defended), 100 images each.
        "table_5": {
            "untargeted_original": {k: 1.0 for k in range(0, 45, 5)},
            "untargeted_defended": {0: 0.08, **{k: 0.0 for k in range(5, 45, 5)}},
            "targeted_original": {0: 1.0, 5: 1.0, 10: 1.0, 15: 1.0, 20: 1.0, 25: 0.98, 30: 0.96,
                                  35: 0.92, 40: 0.90},
            "targeted_defended": {k: 0.0 for k in range(0, 45, 5)}},
        "false_positive_rate": 0.0009,  # Section 4.5, 10,000 benign test images.
    },
    "cifar10": {
        "table_3": {
            "black_box_original": {"fgs": 0.616, "igs": 0.502, "deepfool": 0.638, "cw": 0.089},
            "black_box_defended": {"fgs": 0.686, "igs": 0.625, "deepfool": 0.713, "cw": 0.100},
            "gray_box_original": {"fgs": 0.115, "igs": 0.0, "deepfool": 0.003, "cw": 0.0},
            "gray_box_defended": {"fgs": 0.730, "igs": 0.846, "deepfool": 0.848, "cw": 0.0}},
        "table_4": {"black_box": {"fgs": 0.752, "igs": 0.716, "deepfool": 0.737},
                    "gray_box": {"fgs": 0.752, "igs": 0.726, "deepfool": 0.738}},
        "table_5": {"untargeted_original": {}, "untargeted_defended": {},
                    "targeted_original": {}, "targeted_defended": {}},
        "false_positive_rate": 0.0392,
    },
}

# Attack keys of the members' eval.attacks (experiments/paper_003_collaborative/config.py).
BLACK_BOX = {"fgs": "fgs_bb", "igs": "igs_bb", "deepfool": "deepfool_bb", "cw": "cw_k40_bb"}
GRAY_BOX_ORIGINAL = {"fgs": "fgs", "igs": "igs", "deepfool": "deepfool", "cw": "cw_k40"}
GRAY_BOX_DEFENDED = {"fgs": "fgs_gb", "igs": "igs_gb", "deepfool": "deepfool_gb",
                     "cw": "cw_gb_k40"}
FROM_UNDEFENDED = {"fgs": "fgs_gray", "igs": "igs_gray", "deepfool": "deepfool_gray",
                   "cw": "cw_k40_gray"}


def paper_003_tables(dataset: str, names: dict, labels: dict, kappas: tuple,
                     eps_label: str) -> dict:
  """`names`: role ('substitute', 'oracle', 'collab') -> member name; `labels`: attack key ->
  the label of its settings."""
  paper = PAPER[dataset]
  oracle, collab = names["oracle"], names["collab"]
  cols = tuple((a, TITLES[a]) for a in ATTACKS)
  t3 = paper["table_3"]
  rows3 = [
      table_row("Black-box, Original (crafted on the substitute)", t3["black_box_original"],
                **{a: f"{oracle}:{BLACK_BOX[a]}" for a in ATTACKS}),
      table_row("Black-box, Defended", t3["black_box_defended"],
                **{a: f"{collab}:{BLACK_BOX[a]}" for a in ATTACKS}),
      table_row("Gray-box, Original (crafted on the oracle itself)", t3["gray_box_original"],
                **{a: f"{oracle}:{GRAY_BOX_ORIGINAL[a]}" for a in ATTACKS}),
      table_row("Gray-box, Defended (crafted on its Z head)", t3["gray_box_defended"],
                **{a: f"{collab}:{GRAY_BOX_DEFENDED[a]}" for a in ATTACKS}),
      table_row("Defended, the undefended oracle's examples transferred (ours)", {},
                **{a: f"{collab}:{FROM_UNDEFENDED[a]}" for a in ATTACKS}),
  ]
  t4 = paper["table_4"]
  rows4 = [
      table_row("Black-box: detection rate", t4["black_box"],
                **{a: f"{collab}:{BLACK_BOX[a]}:flagged_rate" for a in ATTACKS}),
      table_row("Gray-box: detection rate", t4["gray_box"],
                **{a: f"{collab}:{GRAY_BOX_DEFENDED[a]}:flagged_rate" for a in ATTACKS}),
      table_row("The undefended oracle's examples: detection rate (ours)", {},
                **{a: f"{collab}:{FROM_UNDEFENDED[a]}:flagged_rate" for a in ATTACKS}),
      table_row("Black-box: misclassified and accepted (ours)", {},
                **{a: f"{collab}:{BLACK_BOX[a]}:misclassified_and_accepted" for a in ATTACKS}),
      table_row("Gray-box: misclassified and accepted (ours)", {},
                **{a: f"{collab}:{GRAY_BOX_DEFENDED[a]}:misclassified_and_accepted"
                   for a in ATTACKS}),
      table_row("The undefended oracle's examples: misclassified and accepted (ours)", {},
                **{a: f"{collab}:{FROM_UNDEFENDED[a]}:misclassified_and_accepted"
                   for a in ATTACKS}),
  ]
  t5 = paper["table_5"]
  kcols = tuple((f"k{k}", f"kappa {k}") for k in kappas)
  by_kappa = lambda numbers: {f"k{k}": numbers[k] for k in kappas if k in numbers}
  rows5 = [
      table_row("Non-targeted, Original (C&W-L2)", by_kappa(t5["untargeted_original"]),
                **{f"k{k}": f"{oracle}:cw_k{k}:attack_success_rate" for k in kappas}),
      table_row("Non-targeted, Defended (eq. 10: misclassified and accepted)",
                by_kappa(t5["untargeted_defended"]),
                **{f"k{k}": f"{collab}:pair_k{k}:misclassified_and_accepted" for k in kappas}),
      table_row("Targeted (random class), Original (C&W-L2)", by_kappa(t5["targeted_original"]),
                **{f"k{k}": f"{oracle}:cw_t_k{k}:attack_success_rate" for k in kappas}),
      table_row("Targeted (random class), Defended (eq. 10: at the target and accepted)",
                by_kappa(t5["targeted_defended"]),
                **{f"k{k}": f"{collab}:pair_t_k{k}:misclassified_and_accepted" for k in kappas}),
  ]
  member_cols = (("oracle", "Original (oracle)"), ("collab", "Defended"))
  rows_benign = [
      table_row("Clean test accuracy (through Z*)", {},
                oracle=f"{oracle}:clean", collab=f"{collab}:clean"),
      table_row("Benign false-positive rate of the pair detector (held-out clean test images)",
                {"collab": paper["false_positive_rate"]},
                oracle="", collab=f"{collab}:held_out_false_positive_rate"),
  ]
  adaptive = [
      ("APGD on margin(Z*, t) + margin(Z', Classmap t) (Original: APGD-T)", "apgd_t",
       "pair_apgd"),
      ("The same, g(Z') held constant on the backward pass (BPDA)", "", "pair_apgd_bpda"),
      ("APGD-T with the detector as reject logit", "apgd_t", "apgd_t_detector"),
      ("Square on 'misclassified and accepted', scores only (Original: Square)", "square",
       "square_detector"),
      ("APGD-CE on the Z head alone (Original: APGD-CE)", "apgd_ce", "z_head_apgd"),
      ("APGD-T transferred from the oracle", "", "oracle_apgd_t"),
  ]
  rows_adaptive = [
      table_row(f"{title} [{labels[collab_key]}]", {},
                oracle=f"{oracle}:{oracle_key}:attack_success_rate" if oracle_key else "",
                collab=f"{collab}:{collab_key}:misclassified_and_accepted")
      for title, oracle_key, collab_key in adaptive]
  rows_adaptive += [
      table_row(f"Worst case per example over every bounded attack (Table 3's FGS and IGS at "
                f"0.1, the adaptive ones at {eps_label})", {}, oracle="",
                collab=f"{collab}:worst_case_bounded_misclassified_and_accepted"),
      table_row("Worst case per example over every attack (DeepFool, C&W and eq. 10 included)",
                {}, oracle="", collab=f"{collab}:worst_case_misclassified_and_accepted")]
  return {
      "order": ("table_3", "table_4", "table_5", "benign", "adaptive"),
      "table_3": table(
          "Table 3: classification accuracy (through Z*) on non-targeted black-box and gray-box "
          "adversarial examples", cols, rows3, row_header="Setting, model",
          note="Black-box: crafted on the substitute (Table 1), transferred. Gray-box: "
               "crafted on the model without its Z' branch (Original: its own white-box "
               "attack; Defended: the attack on its Z head, section 4.4.2). Last row: the "
               "undefended oracle's gray-box examples fed to the defended model. Accuracy "
               "counts flagged inputs by their class, as the paper's table (Table 4 gives "
               "the detector's share)."),
      "table_4": table(
          "Table 4: detection rate of the pair detector against black-box and gray-box "
          "examples", cols, rows4, row_header="Setting",
          note="Detection rate as the paper's: the share of all adversarial versions of the "
               "correctly classified attacked images that the detector flags (successful or "
               "not). The paper reports no C&W column."),
      "table_5": table(
          "Table 5: success rate of the nearly-white-box C&W attack over kappa (MNIST in the "
          "paper)", kcols, rows5, row_header="Attack, model",
          note="Original: C&W-L2 on the undefended oracle, success = misclassified (targeted: "
               "at the target) with margin >= kappa. Defended: equation 10 on Z* and Z' with "
               "the Classmap known to the attacker, success = that *and* accepted by the pair "
               "detector. Share of the correctly classified attacked images."),
      "benign": table(
          "Section 4.5: accuracy and false positives on benign images", member_cols,
          rows_benign, row_header="Measure",
          note="The paper gives the defended models' accuracy only as changes from the "
               "oracle's (MNIST: -0.2% black-box defence, 0% gray-box; CIFAR-10: -2.8% and "
               "-2.1%)."),
      "adaptive": table(
          f"Beyond the paper: adaptive attacks on the classifier and its pair detector "
          f"(L-inf {eps_label})", member_cols, rows_adaptive,
          note="Defended: the share of correctly classified attacked images whose adversarial "
               "version is misclassified *and* accepted by the pair detector (lower is better "
               "for the defense). Original: the share misclassified by the undefended oracle "
               "under the same attack without the detector terms."),
  }


def paper_003_findings(dataset: str, collab: str) -> tuple:
  """The README's findings (defenses_jax/suites/findings.py): the defended model's gray-box
  accuracy under IGS (Table 3; its examples are stopped when classified correctly or flagged),
  under the paper's gray-box IGS and under the attacks that account for the pair detector."""
  return (detector_finding(
      "Collaborative multi-task (pair detector)", collab,
      PAPER[dataset]["table_3"]["gray_box_defended"]["igs"],
      f"Table 3, gray-box IGS, defended, {dataset}", GRAY_BOX_DEFENDED["igs"],
      ("pair_apgd", "pair_apgd_bpda", "apgd_t_detector", "square_detector", "z_head_apgd")),)

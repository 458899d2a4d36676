"""Paper 004 (adversarial transformation): the paper's numbers, stored once under named columns
(CIFAR-10, f_a ResNet-18, eps 0.031, Delta 0.2), and the suite's Tables 1-3, the training time
and the adaptive table beyond the paper (cell syntax: defenses_jax/suites/runner.py)."""

from experiments.common import table, table_row

# Table 1: f_b untrained ('untrained'), trained k epochs (k), adversarially trained ('adv').
PAPER_TABLE_1 = {
    "standard": {"untrained": 0.818, 1: 0.816, 2: 0.824, 5: 0.830, 10: 0.824, 15: 0.822,
                 20: 0.827, "adv": 0.829},
    "bpda_i": {"untrained": 0.306, 1: 0.307, 2: 0.400, 5: 0.464, 10: 0.623, 15: 0.631,
               20: 0.629, "adv": 0.805},
    "linf": {"untrained": 0.005, 1: 0.033, 2: 0.036, 5: 0.067, 10: 0.130, 15: 0.133,
             20: 0.136, "adv": 0.272},
}
# Table 2 (black-box; accuracy): clean, transfer from an independent ResNet-18, HSJ, GA.
PAPER_TABLE_2 = {
    "no_defense": {"clean": 0.929, "transfer": 0.013, "hsj": 0.036, "ga": 0.058},
    "madry": {"clean": 0.817, "transfer": 0.775, "hsj": 0.721, "ga": 0.784},
    "ours": {"clean": 0.829, "transfer": 0.781, "hsj": 0.820, "ga": 0.819},
}
# Table 3: standard and worst-case robust accuracy (the attack that gave it, in the label).
PAPER_TABLE_3 = {
    "no_defense": {"std": 0.929, "rob": 0.0},
    "madry": {"std": 0.817, "rob": 0.427},
    "ours_bpda": {"std": 0.829, "rob": 0.802},
    "ours": {"std": 0.829, "rob": 0.734},
}


def paper_004_tables(dataset: str, scale: str, names: dict, s: dict, labels: dict) -> dict:
  """`names`: role -> member name (config.member_names); `s`: the scale's settings;
  `labels`: attack key -> the label of its settings."""
  header = (f"{dataset}, {scale} scale: eps {s['eps_label']}, Delta {s['delta']} (Delta/eps "
            f"{s['delta'] / s['eps']:.1f}), N {s['steps']}, the first {s['attack_examples']:,} "
            f"test images attacked; the paper's numbers are CIFAR-10's: ResNet-18 f_a, eps "
            f"0.031, Delta/eps 6.5")
  columns_1 = (("untrained", "Untrained"),) + tuple(
      (f"e{k}", f"{k} epoch{'s' if k > 1 else ''}") for k in s["fb_epochs"]) + (
      ("adv", "Adv. trained"),)
  fa = {"untrained": names["fa_untrained"], "adv": names["ours"],
        **{f"e{k}": names[f"fa_e{k}"] for k in s["fb_epochs"]}}
  paper_1 = lambda row: {key: PAPER_TABLE_1[row][int(key[1:]) if key.startswith("e") else key]
                         for key, _ in columns_1}
  rows_1 = [
      table_row("Standard accuracy", paper_1("standard"),
                **{key: f"{fa[key]}:clean" for key, _ in columns_1}),
      table_row(f"BPDA-I accuracy [{labels['bpda_i']}]", paper_1("bpda_i"),
                **{key: f"{fa[key]}:bpda_i" for key, _ in columns_1}),
  ]
  metric = s["metric"]
  rows_1b = [table_row(
      f"||x - E g(x)||_inf, E over {metric['metric_samples']:,} draws, mean over "
      f"{metric['metric_images']} test images", paper_1("linf"),
      **{key: f"{fa[key]}:defense:expected_image_linf" for key, _ in columns_1})]

  madry_title = "Madry et al. (adversarial training" + (
      ", here on each batch and its PGD examples: LeNet stays at chance on the adversarial "
      "examples alone)" if s["madry_include_clean"] else ")")
  columns_2 = (("clean", "Clean"), ("transfer", "Transfer"), ("hsj", "HSJ"), ("ga", "GA"))
  model_rows = (("no_defense", "No defense"), ("madry", madry_title),
                ("ours", "Ours (f_a(g(x)), adversarially trained f_b)"))
  rows_2 = [table_row(title, PAPER_TABLE_2[role], clean=f"{names[role]}:clean",
                      **{a: f"{names[role]}:{a}" for a, _ in columns_2[1:]})
            for role, title in model_rows]

  ours, bpda_rows = names["ours"], "BPDA-I with EOT, BPDA with soft sign and tanh"
  baseline_attacks = "PGD, transfer, HSJ, GA and AutoAttack"
  rows_3 = [
      table_row(f"No defense, worst case under {baseline_attacks} (the paper: PGD)",
                PAPER_TABLE_3["no_defense"], std=f"{names['no_defense']}:clean",
                rob=f"{names['no_defense']}:worst_case:all"),
      table_row(f"{madry_title}, worst case under {baseline_attacks} (the paper: PGD)",
                PAPER_TABLE_3["madry"], std=f"{names['madry']}:clean",
                rob=f"{names['madry']}:worst_case:all"),
      table_row(f"{madry_title}, PGD alone [{labels['pgd']}]", {},
                std=f"{names['madry']}:clean", rob=f"{names['madry']}:pgd"),
      table_row(f"Ours, worst case under every BPDA-type attack ({bpda_rows}; the EOT sweep)",
                PAPER_TABLE_3["ours_bpda"], std=f"{ours}:clean", rob=f"{ours}:worst_case:bpda"),
      table_row("Ours, worst case under the paper's attacks this suite runs (BPDA types, "
                "white-box transfer, black-box transfer from an independent model and from "
                "g with N 1, plain PGD through g, HSJ, GA; not the reparameterisation of "
                "appendix A.2)", PAPER_TABLE_3["ours"],
                std=f"{ours}:clean", rob=f"{ours}:worst_case:paper"),
      table_row("Ours, worst case with the adaptive attacks too (beyond the paper)", {},
                std=f"{ours}:clean", rob=f"{ours}:worst_case:all"),
  ]

  madry = names["madry"]
  rows_time = [
      table_row(madry_title, {}, time=f"{madry}:time",
                ratio=f"{madry}:time_ratio:{madry}"),
      table_row("Ours: f_a on g(x)", {}, time=f"{ours}:time",
                ratio=f"{ours}:time_ratio:{madry}"),
      table_row("Ours: f_b's adversarial training (once; shared by every f_a)", {},
                time=f"{names['fb_adv']}:time", ratio=f"{names['fb_adv']}:time_ratio:{madry}"),
  ]

  adaptive_keys = ("es_sign_pgd", "bpda_i_long", "bpda_i_long_eot", "pgd_through_g",
                   "autoattack_rand", "square")
  rows_adaptive = [table_row(labels[key], {}, ours=f"{ours}:{key}") for key in adaptive_keys]
  rows_adaptive += [
      table_row("Worst case per example over the adaptive attacks", {},
                ours=f"{ours}:worst_case:adaptive"),
      table_row("Worst case per example over every attack (the paper's and the adaptive)", {},
                ours=f"{ours}:worst_case:all"),
      table_row("Clean accuracy (for reference)", {}, ours=f"{ours}:clean"),
  ]
  return {
      "order": ("table_1", "table_1_distance", "table_2", "table_3", "training_time",
                "adaptive"),
      "table_1": table(
          f"Table 1: f_a(g(x)) with different f_b ({header})", columns_1, rows_1,
          row_header="Accuracy",
          note="Each column is an f_a trained on g(x) of that f_b. BPDA-I: PGD with g replaced "
               "by the identity on the backward pass, the gradient averaged over EOT draws of "
               "g's random start."),
      "table_1_distance": table(
          f"Table 1, third row: L-inf distance of the expected transformed image ({header})",
          columns_1,
          rows_1b, row_header="Distance", formats={key: "number" for key, _ in columns_1},
          note="The mean over draws is estimated: with fewer draws than the paper's 5,000 "
               "its sampling noise adds to the distance (most where g barely moves x)."),
      "table_2": table(
          f"Table 2: robustness under black-box attacks ({header})", columns_2, rows_2,
          row_header="Defense model",
          note=f"Transfer: {labels['transfer']}. HSJ: {labels['hsj']}. GA: {labels['ga']}."),
      "table_3": table(
          f"Table 3: standard and worst-case robust accuracy ({header})",
          (("std", "A_std"), ("rob", "A_rob")), rows_3, row_header="Method",
          note="Worst case: per example, over every attack of the row (an example counts as "
               "robust only if no attack fooled it)."),
      "training_time": table(
          f"Training time against Madry et al.'s adversarial training (same run, same "
          f"machine; {header})",
          (("time", "Total training time"), ("ratio", "Ratio to Madry et al.")),
          rows_time, row_header="Training", formats={"time": "seconds", "ratio": "ratio"},
          note="The paper claims a lower training cost than adversarial training but gives "
               "no number. Ours costs f_a's training plus f_b's adversarial training (once, "
               "shared by every f_a): add the two rows. At cpu scale f_b is a 1/8-width VGG "
               "and f_a a LeNet, so the ratio says little about the paper's ResNet-18."),
      "adaptive": table(
          f"Beyond the paper: adaptive attacks on f_a(g(x)) (robust accuracy; {header})",
          (("ours", "Ours"),), rows_adaptive,
          note="Each attack's examples are scored on a fresh draw of g (the deployed "
               "classifier is randomised); lower is a stronger attack. The query attacks "
               "(ES, Square) see one draw of g per query and stop an example at the first "
               "draw that misclassifies it, so they are weak against the randomisation."),
  }


def paper_004_findings(dataset: str, names: dict) -> tuple:
  """The README's findings (defenses_jax/suites/findings.py): the worst-case robust accuracy of
  Table 3 (the paper's numbers are CIFAR-10's) for the adversarial transformation and its Madry
  baseline, under the paper's attacks and with the adaptive ones too."""
  ours, madry = names["ours"], names["madry"]
  source = f"Table 3, worst case, CIFAR-10 (this suite: {dataset})"
  return (
      {"defense": "Adversarial transformation", "member": ours, "quantity": "robust accuracy",
       "claim": PAPER_TABLE_3["ours"]["rob"], "claim_source": source,
       "protocol": f"{ours}:worst_case:paper", "strongest": (f"{ours}:worst_case:all",)},
      {"defense": "Madry adversarial training (its baseline)", "member": madry,
       "quantity": "robust accuracy", "claim": PAPER_TABLE_3["madry"]["rob"],
       "claim_source": source, "protocol": f"{madry}:pgd",
       "strongest": (f"{madry}:worst_case:all",)})

"""Paper 004 (adversarial transformation f_a(g(x)), Xiao & Zheng 2020: "defense by attack")
Tables 1-3, Figures 5-7 and the training time against Madry et al.'s adversarial training,
then adaptive attacks beyond the paper. One command trains every f_b (untrained, trained for a
few epochs, adversarially trained), an f_a on g(x) for each, the f_a of each figure's sweep,
the undefended and Madry-trained baselines and an independent black-box source, evaluates
them and writes the tables with the paper's numbers beside ours:

cpu  (2 CPU cores, offline, embedded MNIST subset: 4,000 training / 1,000 test images):
  python launch.py --config=experiments/paper_004_adv_transform/config.py:cpu --workdir=runs
full (GPU/TPU, tfds CIFAR-10, the paper's settings):
  python launch.py --config=experiments/paper_004_adv_transform/config.py:full --workdir=runs
Tables land in <workdir>/paper_004_adv_transform_<dataset>_<scale>/tables.md (and .json,
figures .png).

g(x) (defenses/attack_transform.py): LL-PGD on the frozen f_b from a random start in the
L-inf Delta-ball, N = 13 steps of Delta / 6, Delta = 0.2 (`variant='code'` for the authors'
code). full: the paper's CIFAR-10 setting: f_b the small VGG, f_a ResNet-18, SGD 0.1 momentum
0.9 constant, 80 epochs; attacks at eps 0.031 with PGD 50 x 0.002; BPDA-I with 500 EOT draws.

cpu (stated in every table header): MNIST, eps 0.1 (the paper's 0.031 is no budget on MNIST,
and its Delta / eps ratio of 6.5 cannot hold at MNIST's usual 0.3: Delta = 2 would leave
nothing of the image) with the paper's Delta = 0.2 and N = 13; f_b the small VGG at 1/8 width
(g differentiates f_b N times per image, in training and at every attack query: at full width
one f_a training step costs 4.4 s on 2 cores); f_a LeNet-5 trained 5 epochs with Adam 1e-3
(every f_a, baselines included, the same); PGD 20 x eps/8 (the paper's 50 x eps/15.5) and
BPDA-I with 10 EOT draws (the paper's 500; Figure 7 sweeps 1-10); Table 1 with f_b trained
1, 5 and 20 epochs (the paper adds 2, 10, 15); Figure 5 at N = 1, 4, 13, Figure 6 at Delta =
0.1, 0.2, 0.3; E g(x) of Table 1 from 500 draws on 50 images (the paper's 5,000); query
attacks with cut budgets (labels). Every attack runs on the first 100 test images, but the
query attacks on the main model on the first 50 (each query runs g).

Settings the paper does not give, and ours: f_b's adversarial training (Madry et al.: PGD on
the adversarial examples only; cpu eps 0.1, 10 x eps/4; full 8/255, 7 x 2/255), the Madry
baseline's (the same attack, on f_a's architecture), the black-box source (an f_a
architecture trained without defense from another seed) and its attack (PGD as the white-box
rows), HopSkipJump and GenAttack "with foolbox's default parameters" (HSJ: 64 steps, 100 to
10,000 gradient queries, success within eps; GA: population 10, 1,000 steps, mutation
probability 0.10, range 0.15, temperature 0.3; untargeted).
"""

import ml_collections

from defenses_jax.errors import ConfigError
from experiments.common import attack, autoattack_entry, base_config, set_cpu_dataset
from experiments.paper_004_adv_transform.tables import paper_004_findings, paper_004_tables

DATASETS = ("mnist", "cifar10")


def parse_arg(arg) -> tuple[str, str]:
  """'cpu' (MNIST), 'full' (CIFAR-10, the paper's), or '<dataset>_<scale>'."""
  arg = arg or "cpu"
  if arg in ("cpu", "full"):
    return ("mnist" if arg == "cpu" else "cifar10"), arg
  dataset, _, scale = arg.rpartition("_")
  if dataset not in DATASETS or scale not in ("cpu", "full"):
    raise ConfigError(f"unknown config argument {arg!r}; use 'cpu', 'full' or one of "
                      f"{[f'{d}_{s}' for d in DATASETS for s in ('cpu', 'full')]}, e.g. "
                      "--config=experiments/paper_004_adv_transform/config.py:cpu")
  return dataset, scale


def scale_settings(dataset: str, scale: str) -> dict:
  if scale == "cpu":
    eps = 0.1
    return dict(
        eps=eps, eps_label="0.1", delta=0.2, steps=13,
        pgd=dict(eps=eps, step_size=eps / 8, steps=20), eot=10,
        fb_model="small_vgg", fb_options={"width": 0.125}, fb_epochs=(1, 5, 20),
        fb_adv_epochs=10, at_attack=dict(eps=eps, n1=4, n2=10),
        fa_model="lenet", fa_epochs=5, optimizer=("adam", 1e-3),
        n_values=(1, 4, 13), deltas=(0.1, 0.2, 0.3), eot_values=(1, 4, 10),
        attack_examples=100, metric=dict(metric_images=50, metric_samples=500),
        hsj=dict(steps=5, max_queries=1000, label="5 steps, at most 1,000 queries"),
        ga=dict(max_steps=50, label="50 steps"), square_queries=500,
        es=dict(steps=10, step_size=eps / 8, samples=(20, 50), boundaries=(5,), chunk=50,
                label="10 x eps/8, 20 then 50 directions"),
        autoattack=dict(steps=20, eot_iter=5), bpda_long=200,
        long_eot=dict(steps=50, eot=10), through_g_eot=5,
        # The query attacks on the main model run on its first 50 attacked images (each
        # query runs g: 13 gradients of f_b), the other attacks on all 100.
        query_examples=50, sanity_examples=10,
        # LeNet under Madry et al.'s adversarial examples alone stays at the uniform output
        # (train loss log 10 = 2.303, 8.4% test accuracy after 5 epochs, still 2.302 at 12):
        # at cpu scale the baseline trains on each batch with its PGD examples (Kurakin et
        # al.'s mix), and its table rows say so.
        madry_include_clean=True)
  eps = 0.031
  return dict(
      eps=eps, eps_label="0.031", delta=0.2, steps=13,
      pgd=dict(eps=eps, step_size=0.002, steps=50), eot=500,
      fb_model="small_vgg", fb_options={}, fb_epochs=(1, 2, 5, 10, 15, 20),
      fb_adv_epochs=80, at_attack=dict(eps=8 / 255, n1=4, n2=7),
      fa_model="resnet18", fa_epochs=80, optimizer=("sgd", 0.1),
      n_values=(1, 2, 3, 4, 5, 7, 10, 13), deltas=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4),
      eot_values=(1, 10, 50, 100, 200, 500),
      attack_examples=1000, metric=dict(metric_images=100, metric_samples=5000),
      hsj=dict(steps=64, label="64 steps (foolbox's default)"),
      ga=dict(max_steps=1000, label="1,000 steps (foolbox's default)"), square_queries=5000,
      es=dict(steps=100, samples=(100, 1000, 20000), boundaries=(20, 40), num_examples=200,
              label="100 steps, 100 / 1,000 / 20,000 directions, first 200 images"),
      autoattack=dict(steps=100, eot_iter=20), bpda_long=200,
      long_eot=dict(steps=100, eot=20), through_g_eot=20, query_examples=0,
      sanity_examples=200, madry_include_clean=False)


def member_names(dataset: str, scale: str, s: dict) -> dict:
  """Role -> experiment name. Roles: fb_e<K>, fb_adv (the f_b), fa_untrained, fa_e<K>, ours
  (f_a on the adversarially trained f_b: Tables 2-3's "Ours"), fa_n<N> (Figure 5, no random
  start), fa_delta<i> (Figure 6's other Delta), no_defense, madry, source."""
  roles = [f"fb_e{k}" for k in s["fb_epochs"]] + ["fb_adv", "fa_untrained"]
  roles += [f"fa_e{k}" for k in s["fb_epochs"]] + ["ours"]
  roles += [f"fa_n{n}" for n in s["n_values"]]
  roles += [delta_role(d) for d in s["deltas"] if d != s["delta"]]
  roles += ["no_defense", "madry", "source"]
  return {role: f"{role}_{dataset}_{scale}" for role in roles}


def delta_role(delta: float) -> str:
  return "fa_delta" + f"{delta:g}".replace(".", "p")


def base_member(name: str, dataset: str, scale: str, s: dict, model: str, epochs: int):
  c = base_config()
  c.experiment_name = name
  c.model.name = model
  c.train.epochs = epochs
  c.train.optimizer, c.train.learning_rate = s["optimizer"]
  c.train.batch_size = 128
  c.eval.num_attack_examples = s["attack_examples"]
  c.eval.sanity.enabled = False
  if scale == "cpu":
    set_cpu_dataset(c, dataset)
    c.train.checkpoint_every_steps = 100
    c.eval.batch_size = 100
    c.eval.sanity.num_examples = 20
    c.eval.sanity.more_steps_factor = 2
  else:
    c.dataset.name = dataset
    c.train.checkpoint_every_steps = 2000
    c.eval.batch_size = 250
    c.eval.sanity.num_examples = 200
  return c


def fb_member(name, dataset, scale, s, epochs, adversarial=False):
  c = base_member(name, dataset, scale, s, s["fb_model"], epochs)
  c.model.options = ml_collections.ConfigDict(dict(s["fb_options"]))
  if adversarial:
    c.defense.name = "adversarial_training"
    c.defense.options = ml_collections.ConfigDict({
        "attack": "madry", "attack_params": dict(s["at_attack"]), "include_clean": False})
  return c


def fa_member(name, dataset, scale, s, attacks: dict, fb: str = "", **options):
  """An f_a trained and evaluated on g(x) of f_b `fb` ('' for an untrained f_b)."""
  c = base_member(name, dataset, scale, s, s["fa_model"], s["fa_epochs"])
  c.defense.name = "adv_transform"
  fb_options = ({"transform_experiment": fb} if fb else
                {"transform_model": s["fb_model"], "transform_model_options": s["fb_options"]})
  c.defense.options = ml_collections.ConfigDict({
      **fb_options, "delta": s["delta"], "steps": s["steps"], **s["metric"], **options})
  c.eval.attacks = ml_collections.ConfigDict(attacks)
  return c


def bpda_i(s: dict, eot: int) -> dict:
  pgd = s["pgd"]
  return attack("pgd", f"BPDA-I (identity backward) with EOT over {eot} draws of g, PGD "
                f"{pgd['steps']} x {pgd['step_size']:.4g}, eps {s['eps_label']}",
                surface="bpda_identity", eot_samples=eot, random_start=False, **pgd)


def bpda_eq5(s: dict, surface: str) -> dict:
  pgd, name = s["pgd"], {"bpda_softsign": "soft sign", "bpda_tanh": "tanh"}[surface]
  return attack("pgd", f"BPDA, sgn as {name} and eq. 5's projection derivative, PGD "
                f"{pgd['steps']} x {pgd['step_size']:.4g}, eps {s['eps_label']}",
                surface=surface, random_start=False, **pgd)


def pgd_entry(s: dict, **extra) -> dict:
  pgd = s["pgd"]
  return attack("pgd", f"PGD {pgd['steps']} x {pgd['step_size']:.4g}, eps {s['eps_label']}",
                random_start=False, **pgd, **extra)


def query_attacks(s: dict) -> dict:
  """Table 2's query attacks (L-inf eps; success within eps)."""
  hsj = {k: v for k, v in s["hsj"].items() if k != "label"}
  ga = {k: v for k, v in s["ga"].items() if k != "label"}
  return {
      "hsj": attack("hop_skip_jump", f"HopSkipJump L-inf, {s['hsj']['label']}, within eps "
                    f"{s['eps_label']}", norm="linf", eps=s["eps"], **hsj),
      "ga": attack("gen_attack", f"GenAttack, untargeted, population 10, {s['ga']['label']}, "
                   f"eps {s['eps_label']}", eps=s["eps"], population=10, mutation_rate=0.10,
                   alpha=0.15, temperature=0.3, adaptive=False, **ga),
  }


def transfer(s: dict, source: str) -> dict:
  return dict(pgd_entry(s), threat_model="transfer", source_experiment=source,
              label=f"{pgd_entry(s)['label']}, crafted on {source}")


def baseline_attacks(s: dict, source: str, scale: str) -> dict:
  """What the undefended and Madry-trained f_a face in Tables 2-3 (their worst case: all)."""
  return {"pgd": pgd_entry(s), **query_attacks(s), "transfer": transfer(s, source),
          "autoattack": autoattack_entry(s["eps"], s["eps_label"], scale)}


def adaptive_attacks(s: dict) -> dict:
  """Beyond the paper, on the main model (scored per example as the worst case)."""
  eps, label, pgd = s["eps"], s["eps_label"], s["pgd"]
  es = {k: v for k, v in s["es"].items() if k not in ("label", "num_examples")}
  aa, long_eot = s["autoattack"], s["long_eot"]
  return {
      "es_sign_pgd": attack("es_sign_pgd", f"sign-PGD on an antithetic ES gradient of the "
                            f"margin (Tramer et al. 2020's k-WTA break), {s['es']['label']}, "
                            f"eps {label}, one draw of g per query", eps=eps,
                            num_examples=s["es"].get("num_examples", 0), **es),
      "bpda_i_long": attack("pgd", f"BPDA-identity, {s['bpda_long']} x 5 eps / "
                            f"{s['bpda_long']}, random start, eps {label} (ME-Net's break)",
                            surface="bpda_identity", eps=eps, steps=s["bpda_long"],
                            step_size=5 * eps / s["bpda_long"], random_start=True),
      "bpda_i_long_eot": attack("pgd", f"BPDA-identity with EOT over {long_eot['eot']} draws, "
                                f"{long_eot['steps']} x 5 eps / {long_eot['steps']}, random "
                                f"start, eps {label}", surface="bpda_identity", eps=eps,
                                steps=long_eot["steps"], eot_samples=long_eot["eot"],
                                step_size=5 * eps / long_eot["steps"], random_start=True),
      "pgd_through_g": attack("pgd", f"PGD through g's unrolled steps (sgn straight-through), "
                              f"EOT over {s['through_g_eot']} draws, {pgd['steps']} x "
                              f"{pgd['step_size']:.4g}, eps {label}",
                              surface="straight_through", eot_samples=s["through_g_eot"],
                              random_start=False, **pgd),
      "autoattack_rand": attack("autoattack", f"AutoAttack rand (APGD-CE, APGD-DLR, EOT "
                                f"{aa['eot_iter']}, {aa['steps']} steps), eps {label}",
                                eps=eps, version="rand", **aa),
      "square": attack("square", f"Square, {s['square_queries']:,} queries, one draw of g "
                       f"per query, eps {label}",
                       eps=eps, max_queries=s["square_queries"]),
  }


def get_config(arg=None):
  dataset, scale = parse_arg(arg)
  s = scale_settings(dataset, scale)
  names = member_names(dataset, scale, s)
  c = ml_collections.ConfigDict()
  c.suite_name = f"paper_004_adv_transform_{dataset}_{scale}"
  c.description = (f"Paper 004 (adversarial transformation f_a(g(x))), {dataset}, {scale} "
                   f"scale: eps {s['eps_label']}, Delta {s['delta']}, N {s['steps']}")
  members = {}
  for k in s["fb_epochs"]:
    members[names[f"fb_e{k}"]] = fb_member(names[f"fb_e{k}"], dataset, scale, s, k)
  members[names["fb_adv"]] = fb_member(names["fb_adv"], dataset, scale, s,
                                       s["fb_adv_epochs"], adversarial=True)
  table_1 = {"bpda_i": bpda_i(s, s["eot"])}
  members[names["fa_untrained"]] = fa_member(names["fa_untrained"], dataset, scale, s, table_1)
  for k in s["fb_epochs"]:
    members[names[f"fa_e{k}"]] = fa_member(names[f"fa_e{k}"], dataset, scale, s, table_1,
                                           fb=names[f"fb_e{k}"])
  for n in s["n_values"]:  # Figure 5: g without its random start, N steps.
    members[names[f"fa_n{n}"]] = fa_member(
        names[f"fa_n{n}"], dataset, scale, s,
        {"bpda_softsign": bpda_eq5(s, "bpda_softsign"), "bpda_tanh": bpda_eq5(s, "bpda_tanh")},
        fb=names["fb_adv"], steps=n, random_start=False)
  sweep = {"bpda_i": bpda_i(s, s["eot"]), "white_box_transfer": white_box_transfer(s),
           **{eot_key(s, e): bpda_i(s, e) for e in s["eot_values"]}}
  for d in s["deltas"]:  # Figures 6-7: an f_a per Delta.
    if d != s["delta"]:
      members[names[delta_role(d)]] = fa_member(names[delta_role(d)], dataset, scale, s,
                                                sweep, fb=names["fb_adv"], delta=d)
  members[names["source"]] = base_member(names["source"], dataset, scale, s, s["fa_model"],
                                         s["fa_epochs"])
  members[names["source"]].seed = 1  # Independently trained: another initialisation and order.
  members[names["no_defense"]] = base_member(names["no_defense"], dataset, scale, s,
                                             s["fa_model"], s["fa_epochs"])
  members[names["no_defense"]].eval.attacks = ml_collections.ConfigDict(
      baseline_attacks(s, names["source"], scale))
  madry = base_member(names["madry"], dataset, scale, s, s["fa_model"], s["fa_epochs"])
  madry.defense.name = "adversarial_training"
  madry.defense.options = ml_collections.ConfigDict({
      "attack": "madry", "attack_params": dict(s["at_attack"]),
      "include_clean": s["madry_include_clean"]})
  madry.eval.attacks = ml_collections.ConfigDict(baseline_attacks(s, names["source"], scale))
  members[names["madry"]] = madry
  for role in ("no_defense", "madry"):
    members[names[role]].eval.worst_case_groups = ml_collections.ConfigDict(
        {"all": tuple(baseline_attacks(s, names["source"], scale))})
  ours_attacks = {
      **sweep, "bpda_softsign": bpda_eq5(s, "bpda_softsign"),
      "bpda_tanh": bpda_eq5(s, "bpda_tanh"),
      "pgd_plain": dict(pgd_entry(s), label=f"{pgd_entry(s)['label']}, by autodiff through "
                        "f_a(g(x)) (dg/dx: the identity where no clip holds), one draw per step"),
      "transfer_small_n": transfer_from_small_n(s, names),
      **{k: v for k, v in baseline_attacks(s, names["source"], scale).items()
         if k not in ("pgd", "autoattack")},
      **adaptive_attacks(s)}
  if s["query_examples"]:
    for key in ("hsj", "ga", "es_sign_pgd", "square"):
      ours_attacks[key] = on_first_images(ours_attacks[key], s["query_examples"])
  ours = fa_member(names["ours"], dataset, scale, s, ours_attacks, fb=names["fb_adv"])
  bpda_keys = ("bpda_i", "bpda_softsign", "bpda_tanh") + tuple(
      eot_key(s, e) for e in s["eot_values"] if e != s["eot"])
  paper_keys = bpda_keys + ("white_box_transfer", "pgd_plain", "transfer", "transfer_small_n",
                            "hsj", "ga")
  ours.eval.worst_case_groups = ml_collections.ConfigDict({
      "bpda": bpda_keys, "paper": paper_keys, "adaptive": tuple(adaptive_attacks(s)),
      "all": paper_keys + tuple(adaptive_attacks(s))})
  ours.eval.sanity.enabled = True  # The main model's evaluation checks itself.
  ours.eval.sanity.num_examples = s["sanity_examples"]
  members[names["ours"]] = ours
  c.members = ml_collections.ConfigDict(members)
  # Transfer sources first: the independent model, and Figure 5's f_a (N = 1 feeds Ours).
  first = [r for r in names if r.startswith("fb_")] + ["source"] + [
      f"fa_n{n}" for n in s["n_values"]]
  c.order = tuple(names[r] for r in first) + tuple(names[r] for r in names if r not in first)
  labels = {key: entry["label"] for m in members.values() for key, entry in m.eval.attacks.items()}
  c.tables = ml_collections.ConfigDict(paper_004_tables(dataset, scale, names, s, labels))
  c.findings = paper_004_findings(dataset, names)
  c.figures = ml_collections.ConfigDict(figures(names, s))
  return c


def transfer_from_small_n(s: dict, names: dict) -> dict:
  """Equation 5's BPDA crafted on Figure 5's f_a with the fewest steps N (where the paper finds
  BPDA works) and transferred to Ours (the paper's appendix A.3)."""
  n = min(s["n_values"])
  entry = bpda_eq5(s, "bpda_softsign")
  return dict(entry, threat_model="transfer", source_experiment=names[f"fa_n{n}"],
              label=f"{entry['label']}, crafted on {names[f'fa_n{n}']} (g with N {n}, no "
                    "random start)")


def on_first_images(entry: dict, n: int) -> dict:
  """The attack on the first n attacked images only (the rest count as it left them)."""
  return dict(entry, num_examples=n, label=f"{entry['label']}, first {n} images")


def eot_key(s: dict, draws: int) -> str:
  """Figure 7's BPDA-I entry for `draws` EOT draws (the main entry at the main count)."""
  return "bpda_i" if draws == s["eot"] else f"bpda_i_eot{draws}"


def white_box_transfer(s: dict) -> dict:
  """Crafted on f_a alone (the bare network), scored on f_a(g(x)): the paper's WT."""
  return dict(pgd_entry(s), threat_model="gray_box",
              label=f"white-box transfer: {pgd_entry(s)['label']} on f_a alone")


def figures(names: dict, s: dict) -> dict:
  delta_member = lambda d: names["ours"] if d == s["delta"] else names[delta_role(d)]
  fig5 = tuple((label, tuple(f"{names[f'fa_n{n}']}:{cell}" for n in s["n_values"]))
               for label, cell in (("standard accuracy", "clean"),
                              ("BPDA, soft sign", "bpda_softsign"),
                              ("BPDA, tanh", "bpda_tanh")))
  fig6 = tuple((label, tuple(f"{delta_member(d)}:{cell}" for d in s["deltas"]))
               for label, cell in (("standard accuracy", "clean"),
                              (f"BPDA-I, EOT {s['eot']}", "bpda_i"),
                              ("white-box transfer", "white_box_transfer")))
  fig7 = tuple((f"Delta {d:g}", tuple(f"{delta_member(d)}:{eot_key(s, e)}"
                                       for e in s["eot_values"])) for d in s["deltas"])
  return {
      "order": ("figure_5_steps", "figure_6_delta", "figure_7_eot"),
      "figure_5_steps": dict(kind="cells_vs_param", title=(
          f"Figure 5: accuracy vs LL-PGD steps N (no random start, Delta {s['delta']}, eps "
          f"{s['eps_label']})"), x_values=tuple(s["n_values"]), x_label="N (LL-PGD steps in g)",
          series=fig5),
      "figure_6_delta": dict(kind="cells_vs_param", title=(
          f"Figure 6: accuracy vs Delta (N {s['steps']}, eps {s['eps_label']})"),
          x_values=tuple(s["deltas"]), x_label="Delta (g's ball)", series=fig6),
      "figure_7_eot": dict(kind="cells_vs_param", title=(
          f"Figure 7: BPDA-I accuracy vs EOT draws (eps {s['eps_label']})"),
          x_values=tuple(s["eot_values"]), x_label="EOT draws of g per step", series=fig7,
          x_log=True),
  }

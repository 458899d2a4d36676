"""Mutation check: does the test suite notice when the library is wrong?

Each mutation below is a small semantic bug (a sign flip, a dropped projection, a wrong label
offset, a state field that is not restored, a sanity check that cannot fail, ...), applied to a
scratch copy of the repository; the tests that should catch it run against that copy. A
mutation is *caught* when those tests fail, *survived* when they pass. The score is the fraction
caught. This is not part of the pytest run (it takes about 20 minutes on 2 CPU cores):

    .venv/bin/python tests/mutation_check.py                 # all mutations, 2 at a time
    .venv/bin/python tests/mutation_check.py --only pgd,eot  # names containing these
    .venv/bin/python tests/mutation_check.py --list

First the selected tests run on the unmutated copy: they must pass, or the score would mean
nothing. A mutation whose text no longer occurs exactly once in its file is reported as stale
(the code moved: update the mutation), and makes the run exit non-zero.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORED = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache", "*.pyc")


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # Relative to the repository root.
  old: str  # Must occur exactly once in the file.
  new: str
  tests: tuple  # pytest arguments (files, node ids, or "-k" expressions) that should catch it.
  why: str = ""


_T = "tests/"
MUTATIONS = (
    # The eleven bugs that once passed every test (issue: "Tests that catch the bugs that matter").
    Mutation("pgd_returns_last_iterate", "defenses_jax/attacks/gradient.py",
             "better = _is_better(success, loss_k, bs, bl)", "better = jnp.ones_like(bs)",
             (_T + "test_attacks.py",), "PGD keeps its last iterate, not its best"),
    Mutation("eot_one_fixed_draw", "defenses_jax/attacks/wrappers.py",
             "keys = jax.random.split(key, num_samples)",
             "keys = jax.vmap(lambda _: key)(jnp.arange(num_samples))",
             (_T + "test_attacks.py",), "every EOT sample uses the same noise"),
    Mutation("deepfool_without_overshoot", "defenses_jax/attacks/deepfool.py",
             "x_next = jnp.clip(x + (1.0 + overshoot) * r_total, 0.0, 1.0)",
             "x_next = jnp.clip(x + r_total, 0.0, 1.0)", (_T + "test_attacks.py",)),
    Mutation("batchnorm_stats_psum", "defenses_jax/train.py",
             "batch_stats = lax.pmean(batch_stats, parallel.DATA_AXIS)",
             "batch_stats = lax.psum(batch_stats, parallel.DATA_AXIS)",
             (_T + "test_parallel.py",)),
    Mutation("batchnorm_stats_pmax", "defenses_jax/train.py",
             "batch_stats = lax.pmean(batch_stats, parallel.DATA_AXIS)",
             "batch_stats = lax.pmax(batch_stats, parallel.DATA_AXIS)",
             (_T + "test_parallel.py",)),
    Mutation("opt_state_not_restored", "defenses_jax/experiment.py",
             "return state if restored is None else TrainState(**restored)",
             "return state if restored is None else TrainState(**{**restored, "
             "'opt_state': state.opt_state})",
             (_T + "test_train.py", _T + "test_parallel.py")),
    Mutation("batch_stats_not_restored", "defenses_jax/experiment.py",
             "return state if restored is None else TrainState(**restored)",
             "return state if restored is None else TrainState(**{**restored, "
             "'batch_stats': state.batch_stats})",
             (_T + "test_train.py", _T + "test_parallel.py")),
    Mutation("sim_adv_trains_on_clean_twice", "defenses_jax/defenses/sim_adv.py",
             "x_adv = jnp.clip(x + delta, 0.0, 1.0)", "x_adv = x", (_T + "test_sim_adv.py",)),
    Mutation("target_training_predicts_with_p_i_only", "defenses_jax/defenses/target_training.py",
             "return merged_class_logits(logits, self.num_classes)",
             "return jax.nn.log_softmax(logits)[..., :self.num_classes]",
             (_T + "test_target_training.py",)),
    Mutation("adversarial_training_second_half_clean",
             "defenses_jax/defenses/adversarial_training.py",
             'jnp.concatenate([batch["image"], x_adv])',
             'jnp.concatenate([batch["image"], batch["image"]])',
             (_T + "test_target_training.py",)),
    Mutation("more_steps_check_reruns_same_steps", "defenses_jax/evaluation/evaluator.py",
             "cfg.more_steps_factor, num_examples=m))", "1, num_examples=m))",
             (_T + "test_evaluate.py",)),
    Mutation("unbounded_check_always_succeeds", "defenses_jax/evaluation/evaluator.py",
             "records.append(sanity.unbounded_attack_succeeds(success))",
             "records.append(sanity.unbounded_attack_succeeds(1.0))", (_T + "test_evaluate.py",)),
    Mutation("suite_tables_never_mark_untrusted", "defenses_jax/suites/tables.py",
             'mark = f" {UNTRUSTED}" if cell["status"] == "warn" else ""', 'mark = ""',
             (_T + "test_evaluate.py", _T + "test_suite.py")),
    Mutation("proxy_trains_on_true_labels", "defenses_jax/distill.py",
             "data_lib.ArrayDataset(train_ds.images, labels,",
             "data_lib.ArrayDataset(train_ds.images, train_ds.labels,",
             (_T + "test_evaluate.py",)),
    # Our own: signs, projections, label offsets, skipped updates.
    Mutation("cross_entropy_sign", "defenses_jax/attacks/objectives.py",
             "jax.nn.logsumexp(others, axis=-1) - class_logit(logits, classes))",
             "class_logit(logits, classes) - jax.nn.logsumexp(others, axis=-1))",
             (_T + "test_attacks.py",)),
    Mutation("margin_sign", "defenses_jax/attacks/objectives.py",
             "return max_other_logit(logits, labels) - class_logit(logits, labels)",
             "return class_logit(logits, labels) - max_other_logit(logits, labels)",
             (_T + "test_attacks.py",)),
    Mutation("targeted_loss_sign", "defenses_jax/attacks/objectives.py",
             "else -cross_entropy(logits, targets)", "else cross_entropy(logits, targets)",
             (_T + "test_attacks.py",)),
    Mutation("linf_projection_dropped", "defenses_jax/attacks/norms.py",
             "delta = jnp.clip(delta, -eps, eps)", "delta = delta", (_T + "test_attacks.py",)),
    Mutation("l2_projection_dropped", "defenses_jax/attacks/norms.py",
             "delta = delta * jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), _TINY))",
             "delta = delta", (_T + "test_attacks.py",)),
    Mutation("box_clip_dropped", "defenses_jax/attacks/norms.py",
             "return jnp.clip(x + delta, 0.0, 1.0)", "return x + delta",
             (_T + "test_attacks.py",)),
    Mutation("fgsm_descends", "defenses_jax/attacks/gradient.py",
             "x_adv = norms.project(x + eps * norms.steepest_ascent(grad, norm), x, eps, norm)",
             "x_adv = norms.project(x - eps * norms.steepest_ascent(grad, norm), x, eps, norm)",
             (_T + "test_attacks.py",)),
    Mutation("cw_binary_search_inverted", "defenses_jax/attacks/carlini_wagner.py",
             "upper = jnp.where(succeeded, jnp.minimum(upper, const), upper)",
             "upper = jnp.where(~succeeded, jnp.minimum(upper, const), upper)",
             (_T + "test_attacks.py",)),
    Mutation("cw_kappa_ignored", "defenses_jax/attacks/carlini_wagner.py",
             "violation = jnp.maximum(kappa - margin(logits, y, t), 0.0)",
             "violation = jnp.maximum(-margin(logits, y, t), 0.0)", (_T + "test_attacks.py",)),
    Mutation("target_training_label_offset", "defenses_jax/defenses/target_training.py",
             'batch["label"] + self.num_classes]', 'batch["label"] + self.num_classes - 1]',
             (_T + "test_target_training.py",)),
    Mutation("sim_adv_restarts_every_n1", "defenses_jax/defenses/sim_adv.py",
             'batch["epoch"] % self.n2 == 0', 'batch["epoch"] % self.n1 == 0',
             (_T + "test_sim_adv.py",)),
    Mutation("sim_adv_buffer_not_written", "defenses_jax/defenses/sim_adv.py",
             'state = {"perturbation": scatter_rows(defense_state["perturbation"], '
             'batch["index"], delta)}', "state = defense_state", (_T + "test_sim_adv.py",)),
    Mutation("free_adv_descends", "defenses_jax/defenses/free_adv.py",
             "+ step * jnp.sign(input_grad)", "- step * jnp.sign(input_grad)",
             (_T + "test_sim_adv.py",)),
    Mutation("atda_center_update_sign", "defenses_jax/defenses/atda.py",
             "return centers - beta * diff / (1.0 + counts[:, None])",
             "return centers + beta * diff / (1.0 + counts[:, None])", (_T + "test_sim_adv.py",)),
    Mutation("gradients_summed_over_devices", "defenses_jax/train.py",
             "grads = lax.pmean(grads, parallel.DATA_AXIS)",
             "grads = lax.psum(grads, parallel.DATA_AXIS)", (_T + "test_parallel.py",)),
    Mutation("defense_state_not_updated", "defenses_jax/train.py",
             "defense_state=defense_state)\n    return new_state, sums",
             "defense_state=state.defense_state)\n    return new_state, sums",
             (_T + "test_sim_adv.py",)),
    Mutation("robust_accuracy_counts_clean_errors", "defenses_jax/evaluation/metrics.py",
             '"robust_accuracy": float(np.mean(adv_correct & clean_correct)),',
             '"robust_accuracy": float(np.mean(adv_correct)),',
             (_T + "test_metrics_sanity_report.py", _T + "test_evaluate.py")),
    Mutation("detector_threshold_off_by_one", "defenses_jax/evaluation/metrics.py",
             "threshold = clean[allowed - 1]", "threshold = clean[allowed]",
             (_T + "test_metrics_sanity_report.py",)),
    Mutation("l2_penalty_on_biases", "defenses_jax/optim.py",
             'if getattr(path[-1], "key", None) == "kernel" and p.ndim >= min_ndim]',
             "if p.ndim >= 1]", (_T + "test_train.py",)),
    Mutation("same_randomness_every_step", "defenses_jax/train.py",
             "key = jax.random.fold_in(base_key, state.step)", "key = base_key",
             (_T + "test_train.py",)),
    Mutation("batch_labels_misaligned", "defenses_jax/data.py",
             '"label": ds.labels[idx], "index": idx.astype(np.int32),\n           "epoch"',
             '"label": ds.labels[np.roll(idx, 1)], "index": idx.astype(np.int32),\n'
             '           "epoch"',
             (_T + "test_data.py",)),
    Mutation("data_order_ignores_epoch", "defenses_jax/data.py",
             "np.random.default_rng([seed, epoch])", "np.random.default_rng([seed, 0])",
             (_T + "test_data.py",)),
    Mutation("replays_not_repeated", "defenses_jax/data.py", "base = step // replays",
             "base = step % steps_per_epoch(len(ds), global_batch_size)",
             (_T + "test_sim_adv.py",)),
    Mutation("checkpoint_of_another_model_accepted", "defenses_jax/checkpoint.py",
             "if section in saved and saved[section] != config.get(section):",
             "if False:", (_T + "test_train.py",)),
    Mutation("worst_case_is_best_case", "defenses_jax/evaluation/metrics.py",
             "robust &= np.asarray(adv_correct, bool)", "robust |= np.asarray(adv_correct, bool)",
             (_T + "test_metrics_sanity_report.py",)),
    Mutation("free_adv_perturbation_unclipped", "defenses_jax/defenses/free_adv.py",
             "jnp.clip(delta, -self.eps, self.eps)", "delta", (_T + "test_sim_adv.py",)),
    Mutation("noise_check_inverted", "defenses_jax/evaluation/sanity.py",
             "ok = noise_accuracy >= attack_accuracy - tolerance(num_examples)",
             "ok = noise_accuracy <= attack_accuracy + tolerance(num_examples)",
             (_T + "test_metrics_sanity_report.py",)),
    # The architecture's new pieces: the Oracle, detection, EOT and randomised defenses.
    Mutation("oracle_counts_refused_queries", "defenses_jax/attacks/query/oracle.py",
             "return self._mask(answers, answered), counts + answered.astype(counts.dtype), "
             "answered", "return self._mask(answers, answered), counts + 1, answered",
             (_T + "test_oracle.py",)),
    Mutation("oracle_lets_gradients_through", "defenses_jax/attacks/query/oracle.py",
             "scores = call_logits(self._logits_fn, _no_gradient(x), key)",
             "scores = call_logits(self._logits_fn, x, key)", (_T + "test_oracle.py",)),
    Mutation("detector_threshold_on_attacked_images", "defenses_jax/evaluation/detection.py",
             "held_out = exp.test_ds.rows(num_attack, cfg.num_threshold_examples)",
             "held_out = exp.test_ds.take(num_attack)", (_T + "test_detection.py",)),
    Mutation("detector_accepts_flagged_inputs", "defenses_jax/evaluation/detection.py",
             "accepted = adv_scores < self.threshold", "accepted = adv_scores >= 0",
             (_T + "test_detection.py",)),
    Mutation("eot_samples_ignored", "defenses_jax/evaluation/threat_models.py",
             "return attacks_lib.eot(target, eot_samples) if eot_samples > 1 else target",
             "return target", (_T + "test_defense_interface.py",)),
    Mutation("randomised_eval_ignores_key", "defenses_jax/experiment.py",
             "predictions = jnp.argmax(defense.deployed(net, batch[\"image\"], key).class_logits,",
             "predictions = jnp.argmax(defense.deployed(net, batch[\"image\"], jax.random.key(0))"
             ".class_logits,", (_T + "test_defense_interface.py",)),
    Mutation("query_attack_gets_the_model_itself", "defenses_jax/evaluation/runner.py",
             "    if info.queries:\n", "    if False:\n", (_T + "test_oracle.py",)),
    Mutation("random_search_keeps_unfooled_candidates",
             "defenses_jax/attacks/query/random_search.py",
             "jnp.where(norms.per_example(fooled, x), z, best)",
             "jnp.where(norms.per_example(answered, x), z, best)", (_T + "test_oracle.py",)),
    Mutation("eval_ignores_padding_mask", "defenses_jax/experiment.py",
             '"count": jnp.sum(batch["mask"])}', '"count": batch["mask"].shape[0] * 1.0}',
             (_T + "test_train.py",)),
    Mutation("reject_logit_sign_flipped", "defenses_jax/attacks/wrappers.py",
             "weight * (detector_score - threshold)", "weight * (threshold - detector_score)",
             (_T + "test_detection.py::test_detector_folded_in_counts_rejected_inputs_as_the_"
              "true_class",)),
    Mutation("detector_aware_attack_ignores_detector", "defenses_jax/evaluation/threat_models.py",
             "    if evade is None:\n", "    if True:\n",
             (_T + "test_detection.py::test_evaluation_with_a_detector_fixes_its_threshold_"
              "first_and_caches_its_state",)),
    Mutation("sigterm_ignored", "defenses_jax/preemption.py", "    return self._requested",
             "    return False", (_T + "test_train.py::test_sigterm_saves_the_current_step_and_"
                                "the_relaunch_ends_bit_identical",)),
    Mutation("preemption_exits_without_saving", "defenses_jax/train.py",
             "        ckpt.save(step, state.as_dict(), force=True)\n        ckpt.close()  # Waits",
             "        ckpt.close()  # Waits", (_T + "test_train.py::test_sigterm_saves_the_current_"
                                               "step_and_the_relaunch_ends_bit_identical",)),
    Mutation("apgd_never_halves", "defenses_jax/attacks/apgd.py",
             'step=jnp.where(halve, s["step"] / 2.0, s["step"])', 'step=s["step"]', (_T + "test_apgd.py",)),
    Mutation("dlr_sign_flipped", "defenses_jax/attacks/apgd.py",
             "return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)",
             "return (true - other) / (top[:, 0] - top[:, 2] + 1e-12)", (_T + "test_apgd.py",)),
    Mutation("apgd_momentum_step_not_projected", "defenses_jax/attacks/apgd.py",
             'z1 = project(s["x"] + (z1 - s["x"]) * momentum + (s["x"] - s["x_old"]) * (1 - momentum))',
             'z1 = (s["x"] + (z1 - s["x"]) * momentum + (s["x"] - s["x_old"]) * (1 - momentum))', (_T + "test_apgd.py",)),
    Mutation("apgd_t_targets_the_true_class", "defenses_jax/attacks/apgd.py",
             "jnp.arange(num_classes) == y[:, None], jnp.inf, -clean",
             "jnp.arange(num_classes) == y[:, None], -jnp.inf, -clean", (_T + "test_apgd.py",)),
    Mutation("apgd_runs_on_after_every_example_is_fooled", "defenses_jax/attacks/apgd.py",
             "return lax.cond(jnp.all(carry[0]), lambda carry: carry,",
             "return lax.cond(jnp.all(carry[0]) & False, lambda carry: carry,", (_T + "test_apgd.py",)),
    Mutation("autoattack_later_member_overrides", "defenses_jax/attacks/apgd.py",
             'take = report["success"] & (broken_by < 0)', 'take = report["success"]', (_T + "test_apgd.py",)),
    Mutation("jsma_modifies_feature_zero_without_a_valid_pair", "defenses_jax/attacks/jsma.py",
             "& (score > 0))", ")", (_T + "test_jsma.py",)),
    Mutation("jsma_beta_not_the_other_classes", "defenses_jax/attacks/jsma.py",
             "beta = -alpha  #", "beta = alpha  #", (_T + "test_jsma.py",)),
    Mutation("jsma_ranks_pairs_by_probabilities", "defenses_jax/attacks/jsma.py",
             "jax.nn.log_softmax(call_logits(", "jax.nn.softmax(call_logits(", (_T + "test_jsma.py",)),
    Mutation("jsma_chunk_offset_dropped", "defenses_jax/attacks/jsma.py",
             "jnp.where(better, start + flat // n, best[1])", "jnp.where(better, flat // n, best[1])",
             (_T + "test_jsma.py",)),
    Mutation("jsma_domain_never_shrinks", "defenses_jax/attacks/jsma.py",
             "return i + 1, z, domain & ~change, active", "return i + 1, z, domain, active", (_T + "test_jsma.py",)),
    Mutation("square_leaves_the_linf_ball", "defenses_jax/attacks/query/square.py",
             "jnp.clip(jnp.clip(candidate, x - eps, x + eps), 0.0, 1.0)",
             "jnp.clip(candidate, 0.0, 1.0)", (_T + "test_square.py",)),
    Mutation("square_keeps_worse_candidates", "defenses_jax/attacks/query/square.py",
             "(new_loss < loss_min)", "(new_loss > loss_min)", (_T + "test_square.py",)),
    Mutation("square_margin_sign_flipped", "defenses_jax/attacks/query/square.py",
             "margin = own - others if", "margin = others - own if", (_T + "test_square.py",)),
    Mutation("autoattack_square_attacks_broken_points", "defenses_jax/attacks/apgd.py",
             "max_queries=square_queries, attack_mask=robust))",
             "max_queries=square_queries))", (_T + "test_apgd.py::test_autoattack_worst_case_is_"
                                             "never_above_any_member",)),
    Mutation("zoo_difference_step_halved", "defenses_jax/attacks/query/zoo.py",
             "grad = (f_plus - f_minus) / (2.0 * h)", "grad = (f_plus - f_minus) / h",
             (_T + "test_zoo.py",)),
    Mutation("zoo_adam_without_bias_correction", "defenses_jax/attacks/query/zoo.py",
             "corr = jnp.sqrt(1 - _BETA2 ** t_i) / (1 - _BETA1 ** t_i)", "corr = 1.0",
             (_T + "test_zoo.py",)),
    Mutation("zoo_kappa_ignored_as_the_reference", "defenses_jax/attacks/query/zoo.py",
             "jnp.maximum(kappa - margins, 0.0)", "jnp.maximum(-margins, 0.0)",
             (_T + "test_zoo.py",)),
    Mutation("zoo_newton_keeps_negative_curvature", "defenses_jax/attacks/query/zoo.py",
             "hess = jnp.where(hess < 0, 1.0, jnp.maximum(hess, 0.1))",
             "hess = jnp.maximum(hess, 0.1)", (_T + "test_zoo.py",)),
    Mutation("zoo_importance_never_uniform", "defenses_jax/attacks/query/zoo.py",
             "(1 - _UNIFORM_SHARE) * imp + _UNIFORM_SHARE * uniform", "imp",
             (_T + "test_zoo.py",)),
    Mutation("hsj_no_baseline_subtraction", "defenses_jax/attacks/query/hop_skip_jump.py",
             "g = sum_phi_u / n - baseline * sum_u / n", "g = sum_phi_u / n",
             (_T + "test_hop_skip_jump.py",)),
    Mutation("genattack_crossover_flipped", "defenses_jax/attacks/query/gen_attack.py",
             "from_first = jax.random.uniform(k_cross, parent1.shape, noise.dtype) < _genes(",
             "from_first = jax.random.uniform(k_cross, parent1.shape, noise.dtype) > _genes(",
             (_T + "test_gen_attack.py",)),
    Mutation("genattack_foolbox_fitness", "defenses_jax/attacks/query/gen_attack.py",
             "fitness = log_p_cls - log_p_others if targeted else",
             "fitness = log_p_cls - jnp.log(jnp.sum(jnp.exp(scores), -1) - log_p_cls) if targeted "
             "else", (_T + "test_gen_attack.py",)),
    Mutation("oracle_budget_is_the_iteration_count", "defenses_jax/attacks/registry.py",
             "return int(self.query_budget(**params)) if self.query_budget else self.budget(params)",
             "return self.budget(params)", (_T + "test_oracle.py",)),
    Mutation("attack_num_examples_ignored", "defenses_jax/evaluation/evaluator.py",
             "n = min(spec.num_examples or len(attack_ds), len(attack_ds))",
             "n = len(attack_ds)", (_T + "test_oracle.py",)),
    Mutation("more_steps_reruns_a_broken_attack", "defenses_jax/evaluation/evaluator.py",
             "broken_already = not np.any(per_attack_correct[spec.key][:m] & spec_clean)",
             "broken_already = False", (_T + "test_evaluate.py::test_more_steps_check_does_not_"
                                        "rerun_an_attack_that_fooled_everything",)),
    Mutation("oracle_flat_batch_misordered", "defenses_jax/attacks/query/oracle.py",
             "flat = self._answer(xs.reshape((-1,) + xs.shape[2:]), key)",
             "flat = self._answer(xs.swapaxes(0, 1).reshape((-1,) + xs.shape[2:]), key)",
             (_T + "test_oracle.py",)),
    Mutation("tensorboard_crc_unmasked", "defenses_jax/tensorboard.py",
             "return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF", "return crc", (_T + "test_train.py::test_tensorboard_scalars_mirror_the_metrics_log_and_a_profile_is_written", _T + "test_train.py::test_crc32c_known_answer")),
    Mutation("tensorboard_learning_rate_one_step_late", "defenses_jax/train.py",
             "learning_rate=float(learning_rate(step - 1)))\n      if interrupt_at_step",
             "learning_rate=float(learning_rate(step)))\n      if interrupt_at_step", (_T + "test_train.py::test_tensorboard_scalars_mirror_the_metrics_log_and_a_profile_is_written", _T + "test_train.py::test_crc32c_known_answer")),
    Mutation("config_sizes_unchecked", "defenses_jax/config_checks.py",
             "    if not isinstance(value, int) or value < 1:", "    if False:", (_T + "test_config_checks.py",)),
    Mutation("divergence_ignored", "defenses_jax/progress.py", "    if not math.isfinite(loss):",
             "    if False:", (_T + "test_config_checks.py",)),
    Mutation("workdir_tilde_not_expanded", "launch.py",
             "workdir = os.path.expanduser(_WORKDIR.value)", "workdir = _WORKDIR.value",
             (_T + "test_launch.py::test_launch_trains_then_evaluates_with_overrides",)),
    Mutation("truncated_config_json_bare_error", "defenses_jax/checkpoint.py",
             "      except json.JSONDecodeError as e:", "      except KeyError as e:",
             (_T + "test_config_checks.py::test_a_truncated_config_json_gets_a_clear_error",)),
    Mutation("uap_step_subtracted", "defenses_jax/attacks/universal.py",
             "project_perturbation(v + (x_df - xv)[0], eps, norm)",
             "project_perturbation(v - (x_df - xv)[0], eps, norm)", (_T + "test_universal.py",)),
    Mutation("uap_not_projected", "defenses_jax/attacks/universal.py",
             "return jnp.clip(v, -eps, eps)", "return v", (_T + "test_universal.py",)),
    Mutation("uap_fooling_against_a_fixed_class", "defenses_jax/attacks/universal.py",
             "batch_size) != clean", "batch_size) != 0", (_T + "test_universal.py",)),
    Mutation("uap_fitted_on_test_images", "defenses_jax/evaluation/universal.py",
             "ds = exp.train_ds.take(spec.fit_examples)", "ds = exp.test_ds.take(spec.fit_examples)",
             (_T + "test_evaluate.py::test_a_universal_perturbation_is_fitted_on_training_images_"
              "cached_and_added_to_test_images",)),
    # Issue 11's reliability defects: each mutation undoes one fix.
    Mutation("checkpoint_saves_asynchronously", "defenses_jax/checkpoint.py",
             "enable_async_checkpointing=False)", "enable_async_checkpointing=True)",
             (_T + "test_reliability.py::test_a_failed_save_stops_the_run_at_once_and_the_process_exits",)),
    Mutation("restored_checkpoint_not_verified", "defenses_jax/checkpoint.py",
             "return None if not damaged else", "return None if True else",
             (_T + "test_reliability.py::test_a_silently_altered_checkpoint_is_caught_and_the_older_step_resumes",)),
    Mutation("unreadable_checkpoint_no_fallback", "defenses_jax/checkpoint.py",
             "failures.append((step, f\"{type(e).__name__}: {e}\"))\n        continue",
             "raise", (_T + "test_reliability.py::test_an_unreadable_latest_checkpoint_falls_back_and_names_the_step",)),
    Mutation("experiment_not_locked", "defenses_jax/checkpoint.py",
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
             (_T + "test_reliability.py::test_a_second_launch_of_a_running_experiment_is_refused_at_once",)),
    Mutation("batch_size_change_allowed_on_resume", "defenses_jax/checkpoint.py",
             'FIXED_ON_RESUME = ("batch_size", "replays")', "FIXED_ON_RESUME = ()",
             (_T + "test_reliability.py::test_resuming_with_another_batch_size_is_refused_and_leaves_the_config",)),
    Mutation("config_written_before_the_resume_check", "defenses_jax/train.py",
             "  changed = resume_changes(ckpt.saved_config, ckpt.config, start_step)\n"
             "  ckpt.write_config()",
             "  ckpt.write_config()\n"
             "  changed = resume_changes(ckpt.saved_config, ckpt.config, start_step)",
             (_T + "test_reliability.py::test_resuming_with_another_batch_size_is_refused_and_leaves_the_config",)),
    Mutation("metrics_log_keeps_rerun_steps", "defenses_jax/train.py",
             "  log.forget_after(start_step)", "  pass",
             (_T + "test_reliability.py::test_a_resumed_run_logs_every_step_once",)),
    Mutation("stale_evaluation_not_marked", "defenses_jax/train.py",
             "    mark_if_stale(os.path.join(exp.exp_dir, \"results\"), step)", "    pass",
             (_T + "test_reliability.py::test_evaluating_an_unfinished_run_says_so_and_goes_stale_after_more_training",)),
    Mutation("incomplete_training_not_reported", "defenses_jax/evaluation/report.py",
             "\"\" if step >= total else", "\"\" if True else",
             (_T + "test_reliability.py::test_evaluating_an_unfinished_run_says_so_and_goes_stale_after_more_training",)),
    Mutation("overridden_attack_params_ignored", "defenses_jax/evaluation/threat_models.py",
             "if norm(label_params.get(k)) != norm(params.get(k))", "if False",
             (_T + "test_reliability.py::test_an_overridden_attack_param_shows_in_the_label_and_is_not_compared_with_the_"
              "paper",)),
    Mutation("every_process_writes_the_metrics_log", "defenses_jax/progress.py",
             "self._enabled = jax.process_index() == 0", "self._enabled = True",
             (_T + "test_multihost.py",)),
    Mutation("every_process_trains_on_the_same_rows", "defenses_jax/data.py",
             "  rows = host_rows(global_batch_size, process_index, process_count)\n"
             "  for step in range(start_step",
             "  rows = host_rows(global_batch_size, 0, process_count)\n"
             "  for step in range(start_step", (_T + "test_multihost.py",)),
    Mutation("int64_labels_wrap", "defenses_jax/data.py",
             "if labels.size and (labels.min() < int32.min or labels.max() > int32.max):",
             "if False:", (_T + "test_data.py",)),
    # Paper 002 (PDM): the defense, the KDE detector, and the attacks on a detected system.
    Mutation("rce_predicts_with_z", "defenses_jax/defenses/pdm.py",
             "return -logits if self.reverse_cross_entropy else logits", "return logits",
             (_T + "test_pdm.py",), "an RCE model deployed with argmax Z instead of argmax -Z"),
    Mutation("rce_divides_by_k", "defenses_jax/defenses/pdm.py",
             "return -jnp.sum(others * log_p, axis=-1) / (k - 1)",
             "return -jnp.sum(others * log_p, axis=-1) / k", (_T + "test_pdm.py",),
             "the reverse label's mass is not 1"),
    Mutation("siamese_partner_may_be_itself", "defenses_jax/defenses/pdm.py",
             "same_other = same & ~jnp.eye(n, dtype=bool)", "same_other = same",
             (_T + "test_pdm.py",), "a same-class pair of an example with itself teaches nothing"),
    Mutation("siamese_cosine_with_itself", "defenses_jax/defenses/pdm.py",
             "cosine = jnp.sum(unit * unit[partner], axis=-1)",
             "cosine = jnp.sum(unit * unit, axis=-1)", (_T + "test_pdm.py",),
             "the Siamese loss ignores the partner"),
    Mutation("kde_bandwidth_convention", "defenses_jax/detectors/kde.py",
             "terms = jnp.where(present, -sq / (2 * h ** 2), -jnp.inf)",
             "terms = jnp.where(present, -sq / h ** 2, -jnp.inf)", (_T + "test_kde.py",),
             "the RCE repo's sigma^2 mixed with sklearn's normalisation"),
    Mutation("kde_scores_the_raw_argmax", "defenses_jax/detectors/kde.py",
             'predicted = jnp.argmax(outputs["class_logits"], axis=-1)',
             'predicted = jnp.argmax(outputs["logits"], axis=-1)', (_T + "test_kde.py",),
             "an RCE model's density taken under the class it does not predict"),
    Mutation("cw_wb_ignores_the_detector", "defenses_jax/attacks/detector_evasion.py",
             'return jnp.maximum(kappa - m, 0.0) + jnp.maximum(out["excess"], 0.0), evades(',
             'return jnp.maximum(kappa - m, 0.0), evades(', (_T + "test_detector_evasion.py",),
             "phase 2 without the density term"),
    Mutation("evades_ignores_the_detector", "defenses_jax/attacks/detector_evasion.py",
             'return (m > 0) & (m >= kappa) & (out["excess"] < 0)',
             'return (m > 0) & (m >= kappa)', (_T + "test_detector_evasion.py",),
             "a flagged input counted as a success"),
    Mutation("feature_matching_ascends", "defenses_jax/attacks/detector_evasion.py",
             "z - step * jnp.sign(grad_fn(z, t))", "z + step * jnp.sign(grad_fn(z, t))",
             (_T + "test_detector_evasion.py",), "moves away from the anchor"),
    Mutation("detected_system_threshold_sign", "defenses_jax/attacks/detector_evasion.py",
             'out["excess"] = out.pop("detector_score") - self.threshold',
             'out["excess"] = out.pop("detector_score") + self.threshold',
             (_T + "test_detector_evasion.py",), "the threshold applied the wrong way"),
    Mutation("worst_case_counts_flagged_inputs", "defenses_jax/evaluation/evaluator.py",
             "clean_correct[:n] & ~adv_correct & (adv_scores < detection.threshold)",
             "clean_correct[:n] & ~adv_correct", (_T + "test_detection.py",),
             "the detection worst case forgets the detector"),

    Mutation("detector_fpr_ignored", "defenses_jax/evaluation/evaluator.py",
             "  if spec.detector_fpr:\n    return metrics", "  if False:\n    return metrics",
             (_T + "test_detection.py",), "CW-wb evades the deployed threshold, not the median"),
    Mutation("baselines_train_on_the_twin", "defenses_jax/defenses/pdm.py",
             "    total = classification\n", "    total = classification + _weighted_mean("
             "per_example[partner], weights)\n", (_T + "test_pdm.py",),
             "the CE and RCE baselines are not plain CE and RCE"),

)

def _copy_repo(destination: str) -> None:
  shutil.copytree(ROOT, destination, ignore=IGNORED)


def _apply(root: str, m: Mutation) -> str:
  """Applies `m` in the copy at `root`; returns the original text of the file."""
  path = os.path.join(root, m.path)
  with open(path) as f:
    text = f.read()
  if text.count(m.old) != 1:
    raise LookupError(f"{m.name}: the text to mutate occurs {text.count(m.old)} times in "
                      f"{m.path}; the code moved, update the mutation.")
  with open(path, "w") as f:
    f.write(text.replace(m.old, m.new))
  return text


def _pytest(root: str, tests: tuple, timeout: int) -> tuple[str, float, str]:
  """('passed' | 'failed' | 'timeout', seconds, last output lines)."""
  start = time.time()
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, ""
  tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
  return ("passed" if proc.returncode == 0 else "failed"), time.time() - start, tail


def _run_one(m: Mutation, scratch: str, timeout: int) -> dict:
  root = os.path.join(scratch, m.name)
  _copy_repo(root)
  try:
    _apply(root, m)
  except LookupError as e:
    return {"name": m.name, "status": "stale", "seconds": 0.0, "detail": str(e)}
  outcome, seconds, tail = _pytest(root, m.tests, timeout)
  shutil.rmtree(root, ignore_errors=True)
  status = {"failed": "caught", "passed": "survived", "timeout": "timeout"}[outcome]
  return {"name": m.name, "status": status, "seconds": round(seconds, 1), "tests": m.tests,
          "detail": tail.splitlines()[-1] if tail else ""}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="comma-separated parts of mutation names")
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--timeout", type=int, default=1200, help="seconds per mutation")
  parser.add_argument("--json", default="", help="also write the results here")
  parser.add_argument("--list", action="store_true")
  args = parser.parse_args()
  chosen = [m for m in MUTATIONS
            if not args.only or any(part in m.name for part in args.only.split(","))]
  if args.list or not chosen:
    for m in MUTATIONS:
      print(f"{m.name:45s} {m.path}  ->  {' '.join(m.tests)}")
    return 0 if chosen else 2
  with tempfile.TemporaryDirectory(prefix="mutation_check_") as scratch:
    baseline_root = os.path.join(scratch, "baseline")
    _copy_repo(baseline_root)
    tests = tuple(sorted({t for m in chosen for t in m.tests}))
    print(f"baseline: {' '.join(tests)} on the unmutated copy ...", flush=True)
    outcome, seconds, tail = _pytest(baseline_root, tests, args.timeout * 2)
    if outcome != "passed":
      print(f"the unmutated tests do not pass ({outcome}, {seconds:.0f} s):\n{tail}")
      return 2
    print(f"baseline passed in {seconds:.0f} s; {len(chosen)} mutations, {args.jobs} at a time",
          flush=True)
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = [pool.submit(_run_one, m, scratch, args.timeout) for m in chosen]
      for future in concurrent.futures.as_completed(futures):
        r = future.result()
        results.append(r)
        print(f"  {r['status']:9s} {r['name']:45s} {r['seconds']:6.0f} s  {r.get('detail', '')}",
              flush=True)
  order = {m.name: i for i, m in enumerate(MUTATIONS)}
  results.sort(key=lambda r: order[r["name"]])
  caught = sum(r["status"] in ("caught", "timeout") for r in results)
  survived = [r["name"] for r in results if r["status"] == "survived"]
  stale = [r["name"] for r in results if r["status"] == "stale"]
  print(f"\nmutation score: {caught}/{len(results)} caught"
        + (f"; survived: {', '.join(survived)}" if survived else "")
        + (f"; stale (update them): {', '.join(stale)}" if stale else ""))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"caught": caught, "total": len(results), "results": results}, f, indent=2)
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main())

"""The mutations of robustness.evaluate (evaluate any model): each breaks one thing its numbers
rest on and names the test that must catch it (tests/mutations.py imports these)."""

from __future__ import annotations

from mutations import Mutation

_R = "tests/test_robustness.py"
_LINEAR = _R + "::test_a_linear_model_gets_its_analytic_robust_accuracy_image_by_image"
_GUARDED = _R + "::test_a_guarded_model_is_scored_misclassified_and_accepted"
_MASKED = (_R + "::test_gradient_masking_fails_the_sanity_checks_and_square_finds_what_apgd_"
           "cannot")

ROBUSTNESS_MUTATIONS = (
    Mutation("evaluate_detector_flag_ignored", "defenses_jax/robustness/system.py",
             "return wrong & ~flagged, flagged", "return wrong, flagged", (_GUARDED,)),
    Mutation("evaluate_attack_ignores_detector", "defenses_jax/robustness/system.py",
             "    if not self.guarded:\n      return self.deployed()\n    evasion",
             "    if True:\n      return self.classifier()\n    evasion", (_GUARDED,)),
    Mutation("evaluate_judges_the_clean_input", "defenses_jax/robustness/engine.py",
             "broken = decide(x_adv, y, decide_key)[0]", "broken = decide(x, y, decide_key)[0]",
             (_LINEAR,)),
    Mutation("evaluate_no_cascade", "defenses_jax/robustness/engine.py",
             "np.flatnonzero(live if row.cascade else",
             "np.flatnonzero(~_broken_clean(broken_by) if row.cascade else",
             (_LINEAR,)),
    Mutation("evaluate_black_box_check_blind", "defenses_jax/evaluation/sanity.py",
             "  ok = share <= tolerance(num_examples)", "  ok = share >= 0", (_MASKED,)),
    Mutation("evaluate_unbounded_check_bounded", "defenses_jax/robustness/checks.py",
             "eps=1.0, step_size=0.05", "eps=0.01, step_size=0.05",
             (_R + "::test_an_undefended_cnn_goes_to_zero_at_a_large_eps",)),
    Mutation("evaluate_any_draw_decides", "defenses_jax/robustness/system.py",
             "return 2 * jnp.sum(broken, 0) >= draws", "return jnp.sum(broken, 0) >= 1",
             (_R + "::test_a_randomised_decision_is_the_majority_of_its_draws",)),
    Mutation("evaluate_labels_off_by_one_accepted", "defenses_jax/robustness/system.py",
             "labels.max() >= num_classes", "labels.max() > num_classes",
             (_R + "::test_bad_input_is_refused_before_any_attack_runs",)),
)

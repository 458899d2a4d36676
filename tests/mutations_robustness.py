"""The mutations of robustness.evaluate (evaluate any model): each breaks one thing its numbers
rest on and names the test that must catch it (tests/mutations.py imports these)."""

from __future__ import annotations

from mutations import Mutation

_R = "tests/test_robustness.py"
_LINEAR = _R + "::test_a_linear_model_gets_its_analytic_robust_accuracy_image_by_image"
_GUARDED = _R + "::test_a_guarded_model_is_scored_misclassified_and_accepted"
_REFUSED = (_R + "::test_a_refused_clean_image_is_not_robust_and_a_tie_at_the_threshold_is_"
            "flagged")
_MASKED = (_R + "::test_gradient_masking_fails_the_sanity_checks_and_square_finds_what_apgd_"
           "cannot")

ROBUSTNESS_MUTATIONS = (
    Mutation("evaluate_detector_flag_ignored", "defenses_jax/robustness/system.py",
             "return wrong & ~flagged, flagged", "return wrong, flagged", (_GUARDED,)),
    Mutation("evaluate_attack_ignores_detector", "defenses_jax/robustness/system.py",
             "    if self.guarded:\n      threshold = self.detector_threshold",
             "    if False:\n      threshold = self.detector_threshold", (_GUARDED,)),
    Mutation("evaluate_judges_the_clean_input", "defenses_jax/robustness/engine.py",
             "through = decide(x_adv, y, decide_key)[0] & valid",
             "through = decide(x, y, decide_key)[0] & valid",
             (_LINEAR,)),
    Mutation("evaluate_no_cascade", "defenses_jax/robustness/engine.py",
             "np.flatnonzero(live if row.cascade else",
             "np.flatnonzero(~state.clean_through if row.cascade else",
             (_LINEAR,)),
    Mutation("evaluate_black_box_check_blind", "defenses_jax/evaluation/sanity.py",
             "  ok = share <= tolerance(num_examples)", "  ok = share >= 0", (_MASKED,)),
    Mutation("evaluate_unbounded_check_bounded", "defenses_jax/robustness/checks.py",
             "eps=1.0, step_size=0.05", "eps=0.01, step_size=0.05",
             (_R + "::test_an_undefended_cnn_goes_to_zero_at_a_large_eps",)),
    Mutation("evaluate_any_draw_decides", "defenses_jax/robustness/system.py",
             "return 2 * jnp.sum(through, 0) >= draws", "return jnp.sum(through, 0) >= 1",
             (_R + "::test_a_randomised_decision_is_the_majority_of_its_draws",)),
    Mutation("evaluate_labels_off_by_one_accepted", "defenses_jax/robustness/system.py",
             "labels.max() >= num_classes", "labels.max() > num_classes",
             (_R + "::test_bad_input_is_refused_before_any_attack_runs",)),
    Mutation("evaluate_refused_clean_counted_robust", "defenses_jax/robustness/engine.py",
             "return self.open() & ~self.refused", "return self.open()", (_REFUSED,)),
    Mutation("evaluate_tie_taken_for_a_success", "defenses_jax/robustness/system.py",
             "Evasion(threshold - TIE_MARGIN * max(1.0, abs(threshold)),",
             "Evasion(threshold,", (_REFUSED,)),
    Mutation("evaluate_nan_logits_classify", "defenses_jax/robustness/system.py",
             "wrong = (jnp.argmax(logits, -1) != y) | ~jnp.all(jnp.isfinite(logits), -1)",
             "wrong = jnp.argmax(logits, -1) != y",
             (_R + "::test_non_finite_logits_count_as_misclassified",)),
    Mutation("evaluate_black_box_absence_passes", "defenses_jax/robustness/checks.py",
             "return SanityCheck(\"black_box_not_stronger\", WARN,",
             "return SanityCheck(\"black_box_not_stronger\", PASS,",
             (_R + "::test_noise_and_transfer_beating_a_blind_battery_are_flagged",)),
)

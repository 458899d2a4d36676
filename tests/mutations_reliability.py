"""The mutations of the "no silent wrong numbers" fixes: each puts back one way a wrong number
got through (a cache reused unverified, a negative eps accepted, a finite divergence ignored,
...) and names the test that must catch it (tests/mutations.py imports these)."""

from __future__ import annotations

from mutations import Mutation

_T = "tests/"
_CACHES = _T + "test_cached_artifacts.py"
_PREFLIGHT = _T + "test_preflight.py"
_RUNS = _T + "test_silent_failures.py"
_SCHEMA = _T + "test_config_schema.py"
_PUBLISH = _T + "test_suite.py::test_publish_copies_the_suite_with_its_provenance_and_findings"
_STALE = _T + "test_suite.py::test_publish_refuses_stale_tables_and_evaluations"
_FINDINGS = _T + "test_findings.py"

RELIABILITY_MUTATIONS = (
    # Cached artefacts: checksum, identity and contract.
    Mutation("cache_checksum_unchecked", "defenses_jax/artifact_cache.py",
             "  if digest(stored, info, identity_text) != recorded:", "  if False:",
             (_CACHES,)),
    Mutation("cache_identity_unchecked", "defenses_jax/artifact_cache.py",
             "  if identity_text != wanted:\n    return _reject(path, \"it was made by something "
             "else: \" + _differences(identity_text, wanted))\n  problem",
             "  problem", (_CACHES + "::test_a_cache_made_by_something_else_is_not_reused",)),
    Mutation("cache_contract_ignored", "defenses_jax/artifact_cache.py",
             "problem = contract(stored, info) if contract is not None else None",
             "problem = None", (_CACHES + "::test_a_cache_made_by_something_else_is_not_reused",)),
    Mutation("norm_ball_without_limit", "defenses_jax/artifact_cache.py",
             "return None if worst <= allowed else", "return None if True else",
             (_CACHES + "::test_norm_ball_and_box_contracts",)),
    Mutation("crafted_examples_from_other_images", "defenses_jax/evaluation/crafted.py",
             "    if not np.array_equal(rows[:n], artifact_cache.row_digests(clean_images[:n])):\n"
             "      return", "    if False:\n      return", (_CACHES,)),
    Mutation("write_not_atomic", "defenses_jax/files.py", "    yield temporary\n",
             "    yield path\n", (_CACHES + "::test_a_write_killed_half_way_leaves_the_previous_"
                                 "file",)),
    Mutation("damaged_results_file_fatal", "defenses_jax/files.py",
             "  except DamagedFileError as e:\n    warn(", "  except KeyError as e:\n    warn(",
             (_CACHES + "::test_cut_off_results_files_are_named_and_recomputed_by_a_suite",)),
    # Checks before compute.
    Mutation("attack_params_unchecked", "defenses_jax/evaluation/threat_models.py",
             "problems = info.check_params(params)", "problems = []", (_PREFLIGHT,)),
    Mutation("open_lower_bound_closed", "defenses_jax/value_checks.py",
             "value <= self.low if self.low_open else value < self.low", "value < self.low",
             (_PREFLIGHT + "::test_attack_parameters_are_checked_when_parsed",)),
    # The config schema (config.py declares, config_schema.py derives).
    Mutation("schema_ranges_unchecked", "defenses_jax/config_schema.py",
             "    return None if self.check is None else self.check.problem_in(value, config)",
             "    return None", (_SCHEMA,), "only the types of config keys are checked"),
    Mutation("schema_free_form_entries_unchecked", "defenses_jax/config_schema.py",
             "    if self.checked_in or not isinstance(self.entry, Check):", "    if True:",
             (_SCHEMA,), "eval.worst_case_groups may name attacks that do not exist"),
    Mutation("upgrade_fills_nothing", "defenses_jax/config_schema.py",
             "  return _filled(schema, config)\n", "  return dict(config)\n",
             (_SCHEMA + "::test_an_old_config_json_loads_upgraded_and_evaluates_as_before",),
             "an old config.json lacks the keys added since"),
    Mutation("attack_entry_unknown_fields_dropped", "defenses_jax/config_schema.py",
             "  unknown = sorted(set(entry) - set(schema.keys))", "  unknown = []",
             (_SCHEMA,), "a misspelt eot_samples is silently ignored"),
    Mutation("suite_members_config_unchecked", "defenses_jax/suites/runner.py",
             "  check_config(member)\n", "", (_PREFLIGHT,)),
    Mutation("held_out_images_unchecked", "defenses_jax/evaluation/preflight.py",
             "    if held_out < needed:", "    if False:", (_PREFLIGHT,)),
    Mutation("untrained_evaluation_goes_ahead", "defenses_jax/experiment.py",
             "    if latest_checkpoint_step(workdir, config.experiment_name) is None:",
             "    if False:", (_PREFLIGHT + "::test_evaluating_an_untrained_experiment_leaves_"
                                "nothing_behind",)),
    Mutation("launch_prints_tracebacks", "launch.py", "    _fail(str(e))", "    raise",
             (_PREFLIGHT + "::test_a_library_error_in_a_run_is_one_line_with_exit_status_1",)),
    # Runs that go wrong.
    Mutation("finite_divergence_ignored", "defenses_jax/progress.py",
             "    if self._losses_above >= DIVERGENCE_PATIENCE:", "    if False:",
             (_RUNS + "::test_a_finite_divergence_stops_training_and_is_recorded",)),
    Mutation("divergence_reference_lost_on_resume", "defenses_jax/progress.py",
             "    self._first_loss = next(", "    self._first_loss = None and next(",
             (_RUNS + "::test_a_resumed_run_keeps_the_initial_loss_as_its_reference",)),
    Mutation("chance_never_detected", "defenses_jax/train.py", "  if accuracy > limit:",
             "  if True:", (_RUNS + "::test_a_model_no_better_than_chance_fails_at_the_end",
                            _RUNS + "::test_chance_level_by_hand")),
    Mutation("checkpoint_restore_catches_too_little", "defenses_jax/checkpoint.py",
             "      except Exception as e:  # noqa: BLE001 - unreadable however it fails",
             "      except (ValueError, KeyError, OSError) as e:  # noqa: BLE001 - unreadable "
             "however it fails", (_RUNS + "::test_damage_inside_compressed_checkpoint_data_falls_"
                                  "back_and_names_the_step",)),
    Mutation("other_data_accepted", "defenses_jax/experiment.py",
             "    if before.get(key) == now[key] or", "    if True or", (_RUNS,)),
    Mutation("arrays_swapped_for_config_data", "defenses_jax/experiment.py",
             "identity[\"source\"] != \"arrays\" and not relabelled:", "False:", (_RUNS,)),
    Mutation("one_indexed_labels_silent", "defenses_jax/data.py",
             "if integer_labels and labels.min() == 1 and", "if False and",
             (_RUNS + "::test_arrays_that_look_like_a_mistake_are_named",)),
    Mutation("stale_during_evaluation_unmarked", "defenses_jax/evaluation/evaluator.py",
             "if latest is not None and latest != summary.step and",
             "if latest is not None and False and",
             (_RUNS + "::test_an_evaluation_that_finishes_after_training_moved_on_is_marked_"
                      "stale",)),
    Mutation("optimiser_change_not_named", "defenses_jax/checkpoint.py",
             "    if before != now:\n      raise CheckpointMismatchError(\n          f\"{self.exp_dir} "
             "holds checkpoints", "    if False:\n      raise CheckpointMismatchError(\n          "
             "f\"{self.exp_dir} holds checkpoints",
             (_RUNS + "::test_a_changed_optimiser_is_named_not_reported_as_another_model",)),
    Mutation("read_only_found_late", "defenses_jax/evaluation/evaluator.py",
             "      check_writable(directory)", "      pass",
             (_RUNS + "::test_a_read_only_experiment_fails_before_the_detector_is_fitted",)),
    # eval.md's own doubts.
    Mutation("noise_tolerance_restored", "defenses_jax/evaluation/sanity.py",
             "ok = noise_accuracy >= attack_accuracy\n",
             "ok = noise_accuracy >= attack_accuracy - tolerance(num_examples)\n",
             (_T + "test_metrics_sanity_report.py",)),
    Mutation("eval_md_rows_unmarked", "defenses_jax/evaluation/report.py",
             "doubt = f\" {UNTRUSTED}\" if summary.warnings_for(r.label) else \"\"",
             "doubt = \"\"", (_T + "test_metrics_sanity_report.py",)),
    Mutation("query_attack_shown_as_white_box", "defenses_jax/evaluation/report.py",
             "  if result.access in (\"scores\", \"labels\"):", "  if False:",
             (_T + "test_metrics_sanity_report.py",)),
    # Published results (issue 41): provenance, currency, findings.
    Mutation("publish_without_provenance_header", "defenses_jax/suites/publish.py",
             "(provenance_header(config.suite_name, runs) + tables_md).encode()",
             "tables_md.encode()", (_PUBLISH,)),
    Mutation("publish_stale_tables", "defenses_jax/suites/publish.py",
             "  if json.loads(json.dumps(now)) != written[\"tables\"]:",
             "  if False:", (_STALE,)),
    Mutation("publish_stale_evaluation", "defenses_jax/suites/publish.py",
             "  if stale:\n    raise PublishError", "  if False:\n    raise PublishError",
             (_STALE,)),
    Mutation("provenance_stage_untimed", "defenses_jax/suites/runner.py",
             "        with run.stage(f\"evaluate {member.experiment_name}\"):\n"
             "          evaluation.evaluate(member, workdir, datasets)",
             "        evaluation.evaluate(member, workdir, datasets)", (_PUBLISH,)),
    Mutation("provenance_published_counted_as_code", "defenses_jax/suites/provenance.py",
             "PUBLISHED_PATHS = (\"results\", \"README.md\")", "PUBLISHED_PATHS = ()",
             (_T + "test_provenance.py",)),
    Mutation("provenance_interrupted_stage_unmarked", "defenses_jax/suites/provenance.py",
             "      entry[\"interrupted\"] = True\n", "", (_T + "test_provenance.py",)),
    Mutation("findings_strongest_is_highest", "defenses_jax/suites/findings.py",
             "strongest = min(known,", "strongest = max(known,", (_FINDINGS,)),
    Mutation("findings_stopped_not_inverted", "defenses_jax/suites/findings.py",
             "    value = 1.0 - value", "    value = value", (_FINDINGS,)),
    Mutation("verdict_broken_reads_agrees", "defenses_jax/suites/findings.py",
             "  if strongest >= claim - within:", "  if strongest >= claim - 2 * within:",
             (_FINDINGS,)),
    # A detection number over a handful of fooled images, compared with the paper unmarked.
    Mutation("few_successful_uncounted", "defenses_jax/suites/cells.py",
             "    cell[\"num_successful\"] = result.detection.num_successful", "    pass",
             (_T + "test_reliability.py::"
              "test_a_detection_number_over_few_successful_examples_shows_its_count",)),
)

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the whole run, shared with the notebook's kernel
# (it inherits the environment): the same solver shapes are then compiled once, not per process.
# The process that makes it removes it at the end (under xdist that is the controller: its
# workers inherit the variable, so they neither make nor remove one); a cache the caller set stays.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxpurify-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The default suite must stay under 5 minutes on 2 cores (`pytest`, two xdist workers). These are
# the heaviest of its tests by `pytest --durations` (each ~10-30 s on a quiet machine, 40-290 s
# under load; together more than half of the suite's time); they run with the slow set
# (`pytest -m slow`, which CI runs too).
HEAVY = {
    "tests/test_nnx.py::test_train_an_encoded_cnn_with_nnx_optimizer_and_load_purified_weights",
    "tests/test_solver.py::test_chunked_columns_match_a_plain_loop",
    "tests/test_readme.py::test_readme_example",
    "tests/test_certificate.py::test_error_bound_holds_where_slack_is_least",
    "tests/test_solver.py::test_broadcasting",
    "tests/test_purify.py::test_write_back_keeps_what_was_certified_at_extreme_scales[5e-38]",
    "tests/test_docs.py::test_snippet_runs[research/gradients.md:0]",
    "tests/test_purify.py::test_matches_a_plain_loop_of_recover_and_the_clean_params",
    "tests/test_certificate.py::test_error_bound_holds_against_float64_truth",
    "tests/test_seal.py::test_span_attack_is_certified_by_l1_and_caught_by_the_seal",
    "tests/test_cli.py::test_demo_recovers_every_scenario_within_capacity",
    "tests/test_state.py::test_train_state_purified_in_place_batch_stats_restored_bit_for_bit",
    "tests/test_readme.py::test_nnx",
    "tests/test_codebook.py::test_padding_is_an_erasure_and_pooled_columns_certify",
    "tests/test_readme.py::test_purify_a_checkpoint",
    "tests/test_solver.py::test_padded_matrices_are_solved_as_their_real_problems",
    "tests/test_bench.py::test_the_accelerator_check_passes_on_the_cpu_at_toy_sizes",
    "tests/test_purify.py::test_entries_stuck_near_the_largest_float_are_not_reported_ok[2.0]",
    "tests/test_readme.py::test_protect_a_model_you_train",
    "tests/test_certificate.py::JitVariants::test_same_answer_with_and_without_jit__without_jit",
    "tests/test_experiments.py::test_the_cifar10_fixture_reads_back_and_trains",
    "tests/test_certificate.py::test_certified_columns_agree_with_highs_at_k_over_n_2",
    "tests/test_certificate.py::test_a_mask_past_the_count_bound_reports_too_many_outliers",
    "tests/test_attacks.py::test_a_split_search_flips_what_the_whole_network_search_flips",
    "tests/test_certificate.py::test_a_column_beside_zero_columns_is_solved_as_alone",
    "tests/test_cli.py::test_dot_joined_safetensors_are_read_and_written_back_dot_joined[damaged]",
    "tests/test_certificate.py::test_later_passes_run_retry_iters_of_admm",
    "tests/test_certificate.py::test_count_bound_blocks_certificate_even_when_exact",
    "tests/test_seal.py::test_in_span_change_of_one_column_is_caught_and_localized",
    "tests/test_state.py::test_an_older_file_without_kinds_or_copies_behaves_as_before",
    "tests/test_solver.py::test_lp_objective_never_beaten_by_highs_on_failures",
    "tests/test_purify.py::test_pooled_layout_report_counts_columns_per_leaf",
    "tests/test_cli.py::test_an_unprotected_leaf_exits_1",
    "tests/test_certificate.py::test_entries_stuck_near_the_largest_float_are_not_certified[256-171-float64]",
    "tests/test_certificate.py::test_entries_stuck_near_the_largest_float_are_not_certified[16-8-float64]",
    "tests/test_certificate.py::test_entries_stuck_near_the_largest_float_are_not_certified[32-22-float32]",
    "tests/test_solver.py::test_too_many_erasures_is_not_certified",
    "tests/test_certificate.py::test_power_of_two_scaling_gives_the_same_bits",
    "tests/test_solver.py::test_no_recompile_for_same_shapes",
    "tests/test_purify.py::test_a_write_back_that_overflows_is_not_reported_certified[False]",
    "tests/test_purify.py::test_write_back_keeps_what_was_certified_at_extreme_scales[1e-30]",
    "tests/test_state.py::test_nnx_checkpoints_as_the_docs_write_them_purify_through_the_cli",
    "tests/test_seal.py::test_whole_column_faults_certified_wrong_are_caught[zeroed]",
    "tests/test_cli.py::test_library_warnings_print_as_one_line",
    "tests/test_certificate.py::test_entries_stuck_near_the_largest_float_are_not_certified[16-8-float32]",
    "tests/test_solver.py::test_scale_robustness",
    "tests/test_solver.py::test_against_highs[96-24-0.45]",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m and -k selection read the items
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in HEAVY:
            item.add_marker(pytest.mark.slow)
    # a renamed heavy test would silently move back into the default suite: every id listed for a
    # file that was collected must name one of its tests
    ids = {item.nodeid for item in items}
    files = {nodeid.split("::")[0] for nodeid in ids}
    stale = sorted(h for h in HEAVY if h.split("::")[0] in files and h not in ids)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py HEAVY names tests that do not exist: {stale}")


# Where the suite's time goes: with JAXPURIFY_COMPILE_LOG=DIR each process appends, per test, the
# seconds XLA spent compiling (jax.monitoring's backend-compile and tracing/lowering events) beside
# the test's own duration, as TSV lines to DIR/<worker>.tsv. Most of the default suite's time is
# compilation of distinct solver programs; this says which tests pay for which.
_COMPILE_LOG = os.environ.get("JAXPURIFY_COMPILE_LOG")
_compile = {"secs": 0.0, "count": 0}

if _COMPILE_LOG:
    import jax.monitoring

    def _on_duration(event: str, duration: float, **_: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            _compile["count"] += 1
        if event.startswith("/jax/core/compile/"):
            _compile["secs"] += duration

    jax.monitoring.register_event_duration_secs_listener(_on_duration)

    def pytest_runtest_logreport(report):
        if report.when == "teardown" or hasattr(report, "node"):  # xdist's controller: a worker's report
            return
        path = os.path.join(_COMPILE_LOG, os.environ.get("PYTEST_XDIST_WORKER", "main") + ".tsv")
        with open(path, "a") as f:
            f.write(
                f"{report.nodeid}\t{report.when}\t{report.duration:.2f}\t{_compile['secs']:.2f}\t{_compile['count']}\n"
            )
        _compile["secs"], _compile["count"] = 0.0, 0

"""Tests marked ``slow`` by name (``conftest.pytest_collection_modifyitems``), so that ``make
test-fast`` (``-m "not slow and not browser and not ray"``) stays under 2 minutes.

Each took 9.5 s or more in one run of the quick subset (``pytest -m "not slow and not browser
and not ray" --durations=30``) on the 2-core development machine while it was loaded (a
single-threaded loop there ran 6.2 times slower than its CPU time at ``nice 15``), that is
about 1.5 s or more on an idle machine. Tests that are slow on their own carry
``@pytest.mark.slow`` in their file instead; ``tests/test_markers.py`` checks that every name
here is a test that exists.
"""

from __future__ import annotations

# test file -> its test functions (every parametrisation of each).
SLOW_TESTS: dict[str, tuple[str, ...]] = {
    "tests/detection/test_dense_inference.py": (
        "test_dense_and_tile_by_tile_give_the_same_heatmap_deposits_and_category",
        "test_a_sparse_grid_and_a_grid_off_the_lattice_are_scored_tile_by_tile",
        "test_a_model_without_dense_logits_or_with_dense_off_is_scored_tile_by_tile",
        "test_the_cascade_scores_its_suspicious_blocks_densely_and_agrees_with_tile_scoring",
        "test_dense_scores_equal_tile_scores_and_stats_say_dense",
        "test_a_grid_ending_in_partial_blocks_with_holes_is_scored_exactly",
    ),
    "tests/slides/test_formats.py": ("test_a_dicom_wsi_made_with_wsidicomizer_round_trips",),
    "tests/benchmarks/test_hostile_sweep.py": (
        "test_a_seeded_sample_of_real_cases_runs_and_is_counted",
        # 2.4 s and 5.1 s in the quick subset on the nearly idle machine (15:58 UTC, 2026-12-07)
        "test_the_runner_tells_a_traceback_a_hang_an_acceptance_lost_data_and_a_refusal_apart",
    ),
    "tests/cli/test_hostile_sweep_findings.py": (
        "test_a_flag_given_double_dash_as_its_value_is_a_usage_error",
    ),
    "tests/training/test_train.py": ("test_hard_negative_mining_adds_normal_tiles_outside_tumor",),
    "tests/models/test_checkpoint.py": (
        "test_training_state_round_trip_resumes_the_optimizer",
        "test_round_trip_of_a_torchvision_backbone",
    ),
    "tests/synthetic/test_synthetic_texture.py": ("test_deposit_edge_blends_over_a_few_micrometres",),
    "tests/cli/test_hostile_round3.py": (
        "test_a_slide_blank_at_the_scoring_level_warns_in_every_output",
        "test_a_second_run_on_a_locked_batch_folder_refuses_and_changes_nothing",
        "test_a_slide_named_like_a_batch_file_never_replaces_it",
        "test_overwrite_with_a_file_or_link_as_the_partial_folder",
    ),
    "tests/batch/test_distributed.py": ("test_without_ray_flag_nothing_of_ray_is_imported",),
    # a second run of the quick subset took 2 min 2 s; these five were its slowest calls (16 s)
    "tests/cli/test_infer_command.py": ("test_infer_keeps_the_patient_mapping_beside_the_batch",),
    "tests/slides/test_plain_images.py": (
        "test_thumbnails_of_a_large_single_level_image_read_bounded_regions",
    ),
    "tests/detection/test_dense_resized.py": (
        "test_real_tumor_deposit_is_found_alike_by_resized_dense_and_per_tile_scoring",
    ),
    "tests/cli/test_bad_input_corpus.py": (
        "test_evaluate_refuses_every_bad_annotation_file",
        "test_infer_over_every_bad_slide_fails_each_with_one_line_and_no_partial_folder",
    ),
}


def is_listed_slow(nodeid: str) -> bool:
    """Whether a collected test's node id ("file::test[params]") names a SLOW_TESTS entry."""
    path, _, name = nodeid.split("[", 1)[0].partition("::")
    return name in SLOW_TESTS.get(path, ())

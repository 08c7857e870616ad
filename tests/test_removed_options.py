"""Removed options that changed the generator: one sentence that refuses such weights or runs, naming the commit."""

from __future__ import annotations

from simpsonize.removed_options import removed_generator_option


def test_a_landmark_maps_run_is_refused_in_a_sentence_naming_its_commit():
    assert removed_generator_option({"landmark_maps": True, "ngf": 64}, "RUN") == (
        "RUN was trained with --landmark-maps, removed after its ablation lost (docs/experiments.md); "
        "commit e674807 still has it."
    )
    # served weights' metadata recorded the face parts, not True
    refusal = removed_generator_option({"landmark_maps": ["eyes", "mouth"]}, "G_B.safetensors", still="serves")
    assert refusal is not None and refusal.endswith("commit e674807 still serves it.")


def test_runs_without_a_removed_generator_option_are_not_refused():
    assert removed_generator_option({"landmark_maps": False, "ngf": 64}, "RUN") is None
    assert removed_generator_option({}, "RUN") is None

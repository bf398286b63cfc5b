"""The training report's pieces (``offline_training.report``) on tiny inputs."""

from __future__ import annotations

import numpy as np

from offline_training.report import _genre_blocks


def test_genre_blocks_name_each_genres_run_of_clips_in_order():
    genres = np.array(["blues"] * 3 + ["jazz"] * 2 + ["rock"])
    assert _genre_blocks(genres) == [("blues", 0, 3), ("jazz", 3, 5), ("rock", 5, 6)]


def test_genre_blocks_are_none_unless_each_genre_is_one_run():
    # clips not sorted by genre: a block per genre would misname rows, so the matrix keeps its clip numbers
    assert _genre_blocks(["blues", "jazz", "blues"]) is None
    assert _genre_blocks([]) is None and _genre_blocks(None) is None

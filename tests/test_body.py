"""Where the body is on a CT slice, and the crop of the model grid around it."""

from __future__ import annotations

import numpy as np

from src_models.inference.body import body_boxes, has_body, model_box


def test_the_box_holds_the_body_and_leaves_out_air_and_table(slice_with_body):
    hu = np.stack([slice_with_body, np.full((120, 160), -1024, np.int16)])
    boxes = body_boxes(hu, (1.0, 1.0))
    row0, row1, col0, col1 = boxes[0]
    # Body rows 15..85 and columns 30..130; the 2 mm mask grid may miss one pixel per edge.
    assert 15 <= row0 <= 16 and 85 <= row1 <= 87
    assert 30 <= col0 <= 31 and 130 <= col1 <= 132
    assert row1 < 100  # the table is not part of the body
    assert has_body(boxes).tolist() == [True, False]
    np.testing.assert_array_equal(boxes[1], 0)


def test_noise_specks_are_no_body():
    hu = np.full((1, 100, 100), -1000, dtype=np.int16)
    hu[0, 50:53, 50:53] = 40  # 9 mm2
    assert not has_body(body_boxes(hu, (1.0, 1.0))).any()


def test_model_box_scales_widens_and_aligns_to_the_pooling_grid():
    boxes = np.array([[100, 300, 60, 420], [0, 0, 0, 0], [120, 320, 80, 440]])
    rows, cols = model_box(boxes, (512, 512), (256, 256), margin=8, multiple=16)
    # union rows 100..320 -> 50..160 on the model grid, minus/plus 8 -> 42..168 -> 32..176
    assert (rows.start, rows.stop) == (32, 176)
    # columns 60..440 -> 30..220 -> 22..228 -> 16..240
    assert (cols.start, cols.stop) == (16, 240)
    edge = model_box(np.array([[0, 512, 0, 512]]), (512, 512), (259, 259), margin=16, multiple=16)
    assert edge == (slice(0, 259), slice(0, 259))  # never beyond the slice; the net pads it
    assert model_box(np.zeros((2, 4), int), (512, 512), (256, 256), margin=8, multiple=16) is None

"""Review and fine-tune widget on the real NIH CT: find corrections, clean up, export, fine-tune."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from qtpy.QtWidgets import QPushButton

from napari_dsms._layers import image_layer_data, labels_layer_data
from napari_dsms._widgets.review import ReviewWidget
from napari_dsms._widgets.segment import SegmentWidget
from src_models import build_model, load_checkpoint, save_checkpoint
from src_models.inference.engine import segment
from src_models.inference.preprocessing import DEFAULT_PREPROCESSING
from src_models.io import Volume, read_labels, read_volume
from src_models.io.orientation import to_canonical
from src_models.jobs import run_to_end
from src_models.phantom import make_phantom

#: Source z range of the crop: 20 slices through the pancreas of patient 0001.
CROP = slice(36, 56)
#: Canonical slices (of the crop) painted with the manual reference as "corrections".
CORRECTED = [2, 4, 6, 8, 10, 12, 14, 16]


@functools.lru_cache(maxsize=1)
def _cropped_arrays(ct_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, labels and affine of 20 slices of the real CT (read once per test session)."""
    ct = read_volume(ct_path)
    labels = read_labels(label_path, ct)
    affine = ct.affine.copy()
    affine[:3, 3] += affine[:3, 2] * CROP.start
    return ct.array[:, :, CROP].copy(), labels.array[:, :, CROP].copy(), affine


def _tiny_model() -> torch.nn.Module:
    """The same width-4 DRS U-Net every time (seeded), so its prediction can be cached."""
    torch.manual_seed(0)
    return build_model("drs_unet", width=4, depth=2)


@functools.lru_cache(maxsize=1)
def _cached_prediction(ct_path: str, label_path: str) -> np.ndarray:
    """Canonical labels of the tiny model on the crop (segmented once per test session)."""
    hu, _, affine = _cropped_arrays(ct_path, label_path)
    model = _tiny_model()
    model.eval()
    meta = {"preprocessing": DEFAULT_PREPROCESSING}
    result = run_to_end(segment(Volume(hu, affine), model, meta, device="cpu"))
    return np.array(to_canonical(result.labels, affine)[0])


@pytest.fixture
def case(tmp_path, monkeypatch, nih_ct, nih_label):
    """The cropped CT written as a file, its reference labels, and a tiny model folder."""
    hu, reference, affine = _cropped_arrays(str(nih_ct), str(nih_label))
    ct_path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(hu, affine), ct_path)
    models = tmp_path / "models"
    monkeypatch.setenv("DSMS_MODEL_DIR", str(models))
    checkpoint = save_checkpoint(
        models / "tiny.pt",
        _tiny_model(),
        preprocessing=DEFAULT_PREPROCESSING,
        provenance={"purpose": "test"},
    )
    prediction = _cached_prediction(str(nih_ct), str(nih_label))
    return {
        "ct": ct_path,
        "reference": reference,
        "affine": affine,
        "checkpoint": checkpoint,
        "prediction": prediction,
    }


def _open(viewer, case) -> tuple:
    """Add the CT and a prediction layer built the way the Segment widget builds it."""
    volume = read_volume(case["ct"])
    data, kwargs, _ = image_layer_data(volume, name="ct")
    image = viewer.add_image(data, **kwargs)
    prediction = case["prediction"]
    data, kwargs, _ = labels_layer_data(prediction.copy(), image, name="ct pancreas/tumour [tiny]")
    kwargs["metadata"].update(
        prediction=prediction.copy(),
        model={"arch": "drs_unet", "checkpoint": str(case["checkpoint"]), "name": "tiny"},
    )
    labels = viewer.add_labels(data, **kwargs)
    reference = np.asarray(to_canonical(case["reference"], case["affine"])[0])
    return image, labels, reference


def _same(a, b) -> bool:
    """Layer identity through napari's plugin proxies."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def _correct(labels, reference) -> None:
    """Paint the manual reference into the chosen slices, as a radiologist would."""
    for k in CORRECTED:
        labels.data[k] = reference[k]
    labels.events.data(value=labels.data)


@pytest.fixture
def widget_and_layers(make_napari_viewer, qtbot, case):
    viewer = make_napari_viewer()
    image, labels, reference = _open(viewer, case)
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    return widget, viewer, image, labels, reference


def test_finds_exactly_the_corrected_slices_and_navigates(widget_and_layers):
    widget, viewer, image, labels, reference = widget_and_layers
    assert widget.image_layer is image and widget.labels_layer is labels
    assert widget.edited_slices() == []
    _correct(labels, reference)
    widget.refresh_status()
    assert widget.edited_slices() == CORRECTED
    widget.go_to_slice(0)
    assert widget.current_slice() == 0
    # the position in mm along the body (napari's status bar) is given beside the slice number
    position = float(image.data_to_world((0, 0, 0))[0])
    assert f"slice 0 of 20; {position:g} mm along the body" in widget.navigate.slice_label.text()
    assert widget.navigate.next_edited() == 2 and widget.current_slice() == 2
    assert widget.navigate.next_edited() == 4
    assert widget.navigate.previous_edited() == 2
    widget.go_to_slice(16)
    assert widget.navigate.next_edited() is None and widget.current_slice() == 16
    assert "mL" in widget.volumes_label.text()

    # an edit reverted by hand is no longer an edit
    labels.data[2] = labels.metadata["prediction"][2]
    widget.refresh_status()
    assert widget.edited_slices() == CORRECTED[1:]


def test_foreground_buttons_stop_where_the_foreground_starts_changes_or_ends(widget_and_layers):
    widget, viewer, image, labels, reference = widget_and_layers
    structured = np.zeros_like(labels.data)
    structured[3:16, 200:230, 200:240] = 1  # pancreas on slices 3..15
    structured[7:10, 210:215, 210:215] = 2  # with tumour on 7..9
    labels.data = structured
    widget.go_to_slice(0)
    stops = [widget.navigate.next_foreground() for _ in range(5)]
    assert stops == [3, 7, 10, 15, None]  # not 3, 4, 5, ... one slice at a time
    assert widget.current_slice() == 15
    assert widget.navigate.previous_foreground() == 10
    assert widget.navigate.previous_foreground() == 7


def test_edits_and_undo_update_the_edited_list_but_scrolling_does_not_recompute(
    widget_and_layers, qtbot
):
    widget, viewer, image, labels, reference = widget_and_layers
    widget.go_to_slice(3)
    target = (np.array([7]), np.array([100]), np.array([100]))
    labels.data_setitem(target, 2 if labels.data[7, 100, 100] != 2 else 1)  # a brush dab
    qtbot.waitUntil(lambda: widget.edited_slices() == [7], timeout=5000)
    labels.undo()  # napari's Ctrl+Z
    qtbot.waitUntil(lambda: widget.edited_slices() == [], timeout=5000)
    qtbot.wait(400)
    widget.go_to_slice(12)
    widget.go_to_slice(13)
    assert not widget._refresh_timer.isActive()  # slice changes cost no full-volume pass


def test_reviewed_slices_visibility_and_brush(widget_and_layers):
    widget, viewer, image, labels, reference = widget_and_layers
    widget.go_to_slice(5)
    widget.navigate.toggle_reviewed()
    widget.go_to_slice(7)
    widget.navigate.toggle_reviewed()
    assert labels.metadata["reviewed"] == [5, 7]
    assert widget.navigate.reviewed_list.count() == 2
    widget.navigate.toggle_reviewed()
    assert widget.reviewed_slices() == [5]

    widget.correct.show_pancreas.setChecked(False)
    colours = labels.colormap.map(np.array([1, 2]))
    assert colours[0][3] == 0 and colours[1][3] > 0
    widget.correct.show_pancreas.setChecked(True)
    assert labels.colormap.map(np.array([1]))[0][3] > 0

    before = np.array(labels.data)
    widget.correct.paint_tumour()
    assert labels.selected_label == 2 and labels.mode == "paint"
    assert labels.brush_size == round(6.0 / image.scale[-1])
    widget.correct.erase()
    assert labels.mode == "erase"
    widget.correct.paint_pancreas()
    assert labels.selected_label == 1
    np.testing.assert_array_equal(labels.data, before)  # helpers never touch the labels


def test_a_position_beyond_the_labels_is_no_slice_of_them(widget_and_layers):
    """With a longer CT open, the slider can stand where the reviewed CT has no slice: a
    tester marked slice 0 reviewed there, unseen, and fill between then used it."""
    widget, viewer, image, labels, reference = widget_and_layers
    longer = viewer.add_image(
        np.zeros((60, 8, 8), np.float32), scale=image.scale, translate=image.translate
    )
    widget.image_combo.value = image  # the longer image does not take the review over
    axis = viewer.dims.ndim - 3
    beyond = float(image.data_to_world((40, 0, 0))[0])
    viewer.dims.set_point(axis, beyond)
    assert widget.slice_on_screen() is None
    assert "no slice of" in widget.navigate.slice_label.text()
    assert not widget.navigate.review_button.isEnabled()
    widget.navigate.toggle_reviewed()
    assert widget.reviewed_slices() == [] and "nothing marked" in widget.navigate.slice_label.text()
    widget.go_to_slice(3)
    assert widget.slice_on_screen() == 3 and widget.navigate.review_button.isEnabled()
    widget.navigate.toggle_reviewed()
    assert widget.reviewed_slices() == [3]
    viewer.layers.remove(longer)


def test_brush_strokes_are_timed_into_the_effort_record(widget_and_layers, monkeypatch):
    """Issue 11's effort record: seconds per edited slice, in the dock and the side-car; a
    tester found neither (the record existed, nothing fed it)."""
    from napari_dsms._widgets import review as review_module

    widget, viewer, image, labels, reference = widget_and_layers
    now = [0.0]
    monkeypatch.setattr(review_module.time, "time", lambda: now[0])
    widget.go_to_slice(4)  # the slice shown does not matter: the stroke's own slices do
    strokes = ((100, 4, 10), (110, 4, 12), (130, 4, 14), (145, 6, 10), (1000, 6, 12))
    for t, k, y in strokes:  # (a coronal stroke was charged to the slider's slice, a tester)
        now[0] = t
        labels.paint((k, y, 10), 1)
    now[0] = 1030.0
    assert widget.triage.fill_between() > 0  # a tool: a pause, not the user's time
    now[0] = 1070.0
    labels.paint((6, 14, 10), 1)  # 40 s after the tool: the user's again
    now[0] = 1075.0
    labels.paint((8, 14, 10), 1)  # then slice 8, 5 s later; undone below
    labels.undo()
    widget.refresh_status()
    assert 8 not in widget.edited_slices()
    assert "1.4 min editing" in widget.volumes_label.text()  # 10 + 20 + 15 + 40 s
    assert "2 slices edited" in widget.volumes_label.text()
    effort = widget.session.sidecar("/out/labels.nii.gz", "labels")["effort"]
    seconds = {e["slice"]: e["seconds"] for e in effort["slices"]}
    assert seconds == {4: 30.0, 6: 55.0}  # slice 8's undone stroke left with its slice
    assert effort["totals"]["minutes"] == round(85 / 60, 2)
    assert effort["totals"]["slices_edited"] == 2


def test_clean_up_keeps_largest_component_and_is_one_undo_step(widget_and_layers):
    widget, viewer, image, labels, reference = widget_and_layers
    model_output = np.zeros_like(labels.data)
    model_output[5:9, 200:230, 200:240] = 1
    model_output[6:8, 210:215, 210:215] = 2
    model_output[15, 10:14, 10:14] = 1  # island
    model_output[6, 205, 205] = 2  # tumour island inside the pancreas
    labels.metadata["prediction"] = model_output.copy()
    labels.data = model_output.copy()  # as the model made it: no slice edited yet
    widget.refresh_status()
    before = np.array(labels.data)
    assert not widget.correct.undo_clean_up()  # nothing cleaned yet, and it says so
    assert "no clean-up" in widget.correct.status.text()
    changed = widget.correct.clean_up()
    assert changed == 16 + 1
    assert labels.data[15].sum() == 0 and labels.data[6, 205, 205] == 1
    labels.undo()  # napari's own undo (Ctrl+Z) reverts the whole clean-up
    np.testing.assert_array_equal(labels.data, before)
    widget.correct.clean_up()
    assert widget.correct.undo_clean_up()
    np.testing.assert_array_equal(labels.data, before)
    # after a later edit the button refuses rather than undo that edit instead
    widget.correct.clean_up()
    labels.data_setitem((np.array([0]), np.array([0]), np.array([0])), 1)
    assert not widget.correct.undo_clean_up() and not widget.correct.undo_cleanup_button.isEnabled()
    assert "edits made after the clean-up first" in widget.correct.status.text()  # not just Ctrl+Z
    assert labels.data[15].sum() == 0 and labels.data[0, 0, 0] == 1


def test_clean_up_is_not_a_correction(widget_and_layers, qtbot):
    widget, viewer, image, labels, reference = widget_and_layers
    model_output = np.zeros_like(labels.data)
    model_output[5:9, 200:230, 200:240] = 1
    model_output[[12, 15], 10:14, 10:14] = 1  # islands the clean-up removes
    labels.metadata["prediction"] = model_output.copy()
    labels.data = model_output.copy()
    labels.data_setitem((np.array([6]), np.array([210]), np.array([210])), 0)  # the user's edit
    widget.refresh_status()
    assert widget.edited_slices() == [6]
    assert widget.correct.clean_up() == 2 * 16
    assert widget.edited_slices() == [6]  # the clean-up's slices are not corrections
    labels.undo()  # napari's Ctrl+Z takes the clean-up back
    qtbot.waitUntil(lambda: labels.data[15, 11, 11] == 1, timeout=5000)
    widget.refresh_status()
    assert widget.edited_slices() == [6]
    widget.correct.clean_up()
    assert widget.correct.undo_clean_up()
    assert widget.edited_slices() == [6]


def test_region_of_interest_clears_outside_and_is_kept(widget_and_layers, tmp_path):
    widget, viewer, image, labels, reference = widget_and_layers
    region = widget.region
    model_output = np.zeros_like(labels.data)
    model_output[5:12, 200:230, 200:240] = 1  # the pancreas
    model_output[1:3, 40:60, 40:60] = 1  # bowel far below it
    model_output[8, 400:420, 400:420] = 1  # vessels beside it
    labels.metadata["prediction"] = model_output.copy()
    labels.data = model_output.copy()
    widget.refresh_status()
    widget.go_to_slice(4)
    region.first_spin.setValue(0)
    [from_here] = [b for b in region.findChildren(QPushButton) if b.text() == "From this slice"]
    from_here.click()
    assert region.first_spin.value() == 4
    region.last_spin.setValue(13)
    shapes = region.draw_box()
    assert viewer.layers.selection.active is shapes and shapes.mode == "add_rectangle"
    assert shapes.ndim == 2  # shown on every slice of the region, not only where drawn
    corners = [[190, 190], [190, 250], [240, 250], [240, 190]]
    shapes.add_rectangles(np.array(corners, dtype=float))
    roi = region.set_region()
    assert (roi.first, roi.last) == (4, 13)
    assert roi.box == (190, 241, 190, 251)
    assert labels.metadata["region_of_interest"]["first_slice"] == 4
    assert region.clear_outside() == 2 * 400 + 400
    assert labels.data[1:3].sum() == 0 and labels.data[8, 400:420, 400:420].sum() == 0
    assert labels.data[5:12, 200:230, 200:240].all()
    assert widget.edited_slices() == []  # clearing outside the region is not a correction
    labels.undo()
    assert labels.data[1, 50, 50] == 1
    labels.redo()
    written = widget.export.export_labels(tmp_path / "roi.nii.gz")
    sidecar = json.loads((tmp_path / "roi.json").read_text())
    assert written is not None and sidecar["region_of_interest"]["last_slice"] == 13
    # the region stays with the labels: a new dock finds it again
    again = ReviewWidget(viewer)
    assert again.session.roi == roi and again.region.first_spin.value() == 4
    # a stray box first, then the real one: the newest counts, and the status says so (the
    # first was taken without a word, a tester)
    shapes.data = []
    shapes.add_rectangles(np.array([[100, 100], [100, 103], [103, 103], [103, 100]], float))
    shapes.add_rectangles(np.array(corners, dtype=float))
    assert region.set_region().box == (190, 241, 190, 251)
    assert "the last of 2 boxes drawn" in region.status.text()
    # a deleted box layer is no box: the region loses it at once (it stayed in force unseen,
    # and Clear outside erased everything outside it), and its rectangle is not used again
    viewer.layers.remove(shapes)
    assert widget.session.roi.box is None and not region.use_box.isChecked()
    assert labels.metadata["region_of_interest"]["box_rows_columns"] is None
    assert "the box layer was deleted" in region.status.text()
    region.use_box.setChecked(True)
    assert region.set_region() is None and "no box drawn" in region.status.text()
    region.draw_box().add_rectangles(np.array(corners, dtype=float))
    assert region.set_region().box == (190, 241, 190, 251)
    region.remove_region()  # takes the box off the screen too
    assert not [layer for layer in viewer.layers if layer.name.endswith(" region")]
    assert not region.use_box.isChecked() and "region_of_interest" not in labels.metadata


def test_clearing_outside_the_region_names_corrected_slices_it_erases(
    widget_and_layers, monkeypatch
):
    """A tester's corrections on slices 20 and 82 went with Clear outside without a word."""
    from napari_dsms._session import RegionOfInterest
    from napari_dsms._widgets.review import roi as roi_module

    widget, viewer, image, labels, reference = widget_and_layers
    _correct(labels, reference)  # slices 2, 4, ..., 16
    widget.refresh_status()
    warned = []
    monkeypatch.setattr(roi_module, "show_warning", warned.append)
    widget.session.roi = RegionOfInterest(5, 19)
    assert widget.region.clear_outside() > 0
    assert len(warned) == 1 and "on your corrected slices 2, 4 too" in warned[0]


def test_metrics_between_model_output_and_corrected_labels(widget_and_layers):
    widget, viewer, image, labels, reference = widget_and_layers
    labels.data[:] = reference
    widget.refresh_status()
    assert widget.compare.prediction_choice[1] == "prediction"
    assert widget.compare.reference_combo.value is labels
    # the kind first: at 1366 x 768 the menu cuts the names' ends, where both read alike
    shown = widget.compare.prediction_combo.native.currentText()
    assert shown == f"model output of {labels.name}"
    widget.go_to_slice(10)
    result = widget.compare.compute_metrics()
    from src_models.metrics import case_metrics

    expected = case_metrics(labels.metadata["prediction"], reference)
    assert result["volume"]["pancreas"].dice == pytest.approx(expected["pancreas"].dice)
    assert (
        result["slice"]["pancreas"]
        == case_metrics(labels.metadata["prediction"][10], reference[10], image.scale[1:])[
            "pancreas"
        ]
    )
    assert "Dice" in widget.compare.metrics_label.text()
    # no tumour in either layer (the manual reference against itself): said in words, not as
    # a Dice of 1.000
    widget.compare.compare_pair(labels, labels)
    widget.compare.compute_metrics()
    assert "volume, tumour: no tumour in either" in widget.compare.metrics_label.text()
    # a tumour the other layer lacks: its PPV is not a perfect 1.000 (0 of 0 voxels right)
    painted = np.where(reference > 0, 1, 0).astype(reference.dtype)
    painted[10][reference[10] > 0] = 2
    with_tumour = viewer.add_labels(painted, scale=labels.scale, name="with tumour")
    widget.compare.compare_pair(labels, with_tumour)
    widget.compare.compute_metrics()
    text = widget.compare.metrics_label.text()
    assert "volume, tumour: Dice 0.000  PPV n/a (none predicted)  sens. 0.000" in text
    # figures of labels that changed since are not left on screen
    labels.data_setitem((np.array([0]), np.array([0]), np.array([0])), 1)
    assert "compute again" in widget.compare.metrics_label.text()
    assert "Dice" not in widget.compare.metrics_label.text()


def test_export_is_bit_exact_on_the_source_grid_with_sidecar(widget_and_layers, case, tmp_path):
    widget, viewer, image, labels, reference = widget_and_layers
    _correct(labels, reference)
    widget.go_to_slice(3)
    widget.navigate.toggle_reviewed()
    target = tmp_path / "out" / "corrected.nii.gz"
    target.parent.mkdir()
    written = widget.export.export_labels(target)
    assert written == target
    saved = nib.load(target)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), _source_grid(labels.data, case))
    np.testing.assert_allclose(saved.affine, case["affine"], atol=1e-4)
    sidecar = json.loads((tmp_path / "out" / "corrected.json").read_text())
    assert sidecar["edited_slices"]["canonical"] == CORRECTED
    assert sidecar["edited_slices"]["source"] == CORRECTED  # LAS file: z index = canonical
    assert sidecar["reviewed_slices"]["canonical"] == [3]
    assert sidecar["source_image"] == str(case["ct"])
    assert sidecar["model"]["checkpoint"] == str(case["checkpoint"])
    assert sidecar["volumes_ml"]["pancreas"] > 0

    # without a path, a dialog proposes a name in the folder of the last export, never among
    # the source data, and offers DICOM-SEG too
    proposed: list[tuple[str, str]] = []
    widget.export._ask_save_path = lambda title, suggested, filters: proposed.append(
        (suggested, filters)
    )
    assert widget.export.export_labels() is None
    assert proposed[0][0] == str(target.parent / "ct_labels.nii.gz")
    assert "*.dcm" in proposed[0][1]
    # the question before replacing names the side-car that is really written
    from napari_dsms._widgets.review.export import replace_question

    assert "corrected.json" in replace_question(target) and ".nii.json" not in replace_question(
        target
    )

    # an existing file is replaced only when the user agrees
    asked: list[Path] = []
    widget.export._confirm_replace = lambda path: asked.append(path) or False
    first = np.asarray(saved.dataobj).copy()
    labels.data[0, 0, 0] = 0 if labels.data[0, 0, 0] else 1
    assert widget.export.export_labels(target) is None and asked == [target]
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), first)
    assert "not exported" in widget.export.export_label.text()  # not the last export's report
    # the source CT is never overwritten, and the user is not even asked
    asked.clear()
    assert widget.export.export_labels(case["ct"]) is None and asked == []
    assert "source CT" in widget.export.export_label.text()
    assert nib.load(case["ct"]).get_data_dtype() == np.int16
    # nor written into a DICOM series folder, where it would join the series
    series = tmp_path / "series"
    series.mkdir()
    image.metadata["source"] = str(series)
    assert widget.export.export_labels(series / "corr.nii.gz") is None and asked == []
    assert "DICOM series folder" in widget.export.export_label.text()
    assert list(series.iterdir()) == []


def test_export_keeps_the_viewer_responsive(widget_and_layers, tmp_path, monkeypatch):
    from qtpy.QtCore import QTimer

    widget, viewer, image, labels, reference = widget_and_layers
    real_save = nib.save

    def slow_save(*args, **kwargs):  # a large CT on a slow disk
        import time

        time.sleep(0.6)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(nib, "save", slow_save)
    ticks: list[int] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    written = widget.export.export_labels(tmp_path / "slow.nii.gz")
    timer.stop()
    assert written == tmp_path / "slow.nii.gz" and written.is_file()
    assert len(ticks) >= 10  # the GUI thread kept running while the file was written
    assert not widget.export.busy


def test_export_reconstruction_needs_a_drs_layer(widget_and_layers, case, tmp_path):
    widget, viewer, image, labels, reference = widget_and_layers
    assert widget.export.export_reconstruction(tmp_path / "r.nii.gz") is None
    recon = np.random.default_rng(0).random(image.data.shape).astype(np.float16)
    other = {"arch": "dsmsc_unet", "checkpoint": "/elsewhere/other.pt", "name": "other"}
    metadata = {**image.metadata, "dsms_role": "reconstruction", "model": other}
    viewer.add_image(
        recon,
        name="ct reconstruction [other]",
        metadata=metadata,
        scale=image.scale,
        translate=image.translate,
    )
    # another model's reconstruction is never exported beside these labels
    assert widget.export.export_reconstruction(tmp_path / "r.nii.gz") is None
    assert "tiny" in widget.export.export_label.text()
    mine = {**labels.metadata["model"]}
    viewer.add_image(
        recon,
        name="ct reconstruction [tiny]",
        metadata={**metadata, "model": mine},
        scale=image.scale,
        translate=image.translate,
    )
    written = widget.export.export_reconstruction(tmp_path / "r.nii.gz")
    saved = nib.load(written)
    # HU as int16 in the tiny model's window [0, 255] (issue 14.9), not float32 window units
    assert saved.get_data_dtype() == np.int16
    expected = np.rint(_source_grid(recon, case).astype(np.float32) * 255).astype(np.int16)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), expected)
    sidecar = json.loads((tmp_path / "r.json").read_text())
    assert sidecar["kind"] == "reconstruction" and sidecar["model"]["name"] == "tiny"


def _source_grid(canonical: np.ndarray, case) -> np.ndarray:
    from src_models.io.orientation import from_canonical

    return from_canonical(np.asarray(canonical), case["affine"])


def _wait_idle(qtbot, widget, timeout_ms: int = 120_000) -> None:
    qtbot.waitUntil(lambda: not widget.fine_tune.is_busy, timeout=timeout_ms)


def test_fine_tune_on_corrections_saves_a_new_listed_checkpoint(make_napari_viewer, qtbot, case):
    # Docked from the plugin's manifest as a user does: napari then hands the widgets a viewer
    # whose layers are proxies, which must not confuse layer identity.
    viewer = make_napari_viewer()
    image, labels, reference = _open(viewer, case)
    _, segment = viewer.window.add_plugin_dock_widget("napari-dsms", "Segment")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dsms", "Review and fine-tune")
    assert isinstance(widget, ReviewWidget) and isinstance(segment, SegmentWidget)
    _correct(labels, reference)
    widget.refresh_status()
    assert Path(widget.fine_tune.checkpoint_combo.currentData()) == case["checkpoint"]
    widget.fine_tune.steps_spin.setValue(30)
    widget.fine_tune.budget_spin.setValue(0)
    before = np.array(labels.data)
    with qtbot.waitSignal(widget.fine_tune.fine_tuned, timeout=120_000) as saved:
        worker = widget.fine_tune.fine_tune()
        assert worker is not None and widget.fine_tune.is_busy
    _wait_idle(qtbot, widget)
    path = saved.args[0]
    assert path == case["checkpoint"].parent / "tiny-ft-ct-v1.pt"
    assert widget.fine_tune.last_checkpoint == path
    losses = widget.fine_tune.loss_plot.values
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the loss goes down
    model, meta = load_checkpoint(path)
    record = meta["provenance"]["fine_tune"]
    assert record["base_checkpoint"] == str(case["checkpoint"])
    assert sorted(record["slices"] + record["holdout_slices"]) == CORRECTED
    assert len(record["holdout_slices"]) == 2 and record["steps"] == 30
    # dsms evaluate knows the CT it learnt from in any axis order or dtype (a tester)
    from src_models.autosave import volume_content_key
    from src_models.io import read_volume

    assert record["source_digest"] == volume_content_key(read_volume(case["ct"]))
    assert set(meta["metrics"]) >= {"dice_pancreas"}
    combo = widget.fine_tune.checkpoint_combo
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert str(path) in listed
    np.testing.assert_array_equal(labels.data, before)  # fine-tuning never edits labels
    report = widget.fine_tune.fine_tune_label.text()
    assert "Dice" in report
    # says what the held-out figure is measured on, and advises
    assert f"did not train on (slice {', '.join(map(str, record['holdout_slices']))})" in report
    assert "keep" in report.lower() or "About the same" in report

    # the Segment widget lists and selects the new model at once (it watches the model folder)
    qtbot.waitUntil(
        lambda: (
            segment.checkpoint is not None and Path(segment.checkpoint).resolve() == path.resolve()
        ),
        timeout=10_000,
    )
    # the panel re-segments with it itself, through the same job as the Segment widget
    assert widget.fine_tune.resegment_button.isEnabled()
    widget.region.first_spin.setValue(2)  # the pancreas lies on slices 2 to 16
    widget.region.last_spin.setValue(16)
    assert widget.region.set_region() is not None
    with qtbot.waitSignal(widget.fine_tune.resegmented, timeout=60_000) as segmented:
        widget.fine_tune.resegment_button.click()
    qtbot.waitUntil(lambda: not widget.fine_tune.is_busy, timeout=10_000)
    new_layer = segmented.args[0]
    assert not _same(new_layer, labels)
    assert new_layer.metadata["model"]["checkpoint"] == str(path)
    # the model re-segments inside the region of interest only
    assert not np.asarray(new_layer.data)[[0, 1, 17, 18, 19]].any()
    assert not np.asarray(new_layer.metadata["prediction"])[[0, 1, 17, 18, 19]].any()
    assert _same(widget.compare.prediction_choice[0], new_layer)
    assert _same(widget.compare.reference_combo.value, labels)
    assert _same(widget.labels_layer, labels)
    np.testing.assert_array_equal(labels.data, before)
    # the next stroke goes into the corrections, not into the comparison layer
    assert viewer.layers.selection.active is labels and new_layer.mode == "pan_zoom"


def test_cancel_keeps_the_base_model_and_the_labels(widget_and_layers, qtbot, case):
    widget, viewer, image, labels, reference = widget_and_layers
    _correct(labels, reference)
    widget.refresh_status()
    widget.fine_tune.steps_spin.setValue(500)
    before = np.array(labels.data)
    worker = widget.fine_tune.fine_tune()
    worker.yielded.connect(lambda event: widget.fine_tune.cancel_fine_tune())
    _wait_idle(qtbot, widget)
    assert widget.fine_tune.last_checkpoint is None
    assert sorted(p.name for p in case["checkpoint"].parent.glob("*.pt")) == ["tiny.pt"]
    assert Path(widget.fine_tune.checkpoint_combo.currentData()) == case["checkpoint"]
    assert "cancelled" in widget.fine_tune.fine_tune_label.text()
    np.testing.assert_array_equal(labels.data, before)
    assert widget.fine_tune.fine_tune_button.isEnabled()


def test_fine_tune_refuses_when_there_is_nothing_to_learn(widget_and_layers, qtbot, case):
    widget, viewer, image, labels, reference = widget_and_layers
    assert widget.fine_tune.fine_tune() is None
    assert "no corrected slices" in widget.fine_tune.fine_tune_label.text()
    labels.metadata["prediction"][3, 100:110, 100:110] = 1
    labels.data[:] = 0  # edits that erase everything leave nothing to learn
    widget.refresh_status()
    assert widget.fine_tune.fine_tune() is None
    assert "no pancreas" in widget.fine_tune.fine_tune_label.text()
    other = viewer.add_labels(np.zeros((5, 8, 8), np.uint8), name="other")
    assert widget.select_labels(other)
    assert widget.fine_tune.fine_tune() is None
    assert "another image" in widget.fine_tune.fine_tune_label.text()
    assert not widget.fine_tune.is_busy


def test_fine_tune_from_a_model_that_learnt_these_slices_is_refused(widget_and_layers, case):
    """Held out, a slice the base model learnt in a refine round scores from memory: such
    slices are not held out, and with no other edited slice the button says why."""
    widget, viewer, image, labels, reference = widget_and_layers
    _correct(labels, reference)
    widget.refresh_status()
    model, meta = load_checkpoint(case["checkpoint"])
    round_record = {"source_digest": widget.session.content_key(), "slices": CORRECTED,
                    "kept_previous": False}  # fmt: skip
    base = save_checkpoint(
        case["checkpoint"].parent / "round1.pt", model, preprocessing=meta["preprocessing"],
        provenance={"fine_tune": round_record},
    )  # fmt: skip
    widget.fine_tune.refresh_checkpoints()
    assert widget.fine_tune.select_checkpoint(base)
    assert widget.fine_tune.fine_tune() is None
    assert "learnt from every edited slice" in widget.fine_tune.fine_tune_label.text()


def test_base_model_defaults_to_the_checkpoint_that_made_the_labels(widget_and_layers, case):
    widget, viewer, image, labels, reference = widget_and_layers
    elsewhere = case["ct"].parent / "browsed.pt"
    elsewhere.write_bytes(case["checkpoint"].read_bytes())  # a file outside the model folders
    data = np.array(labels.data)
    metadata = {**labels.metadata, "model": {"arch": "drs_unet", "checkpoint": str(elsewhere)}}
    other = viewer.add_labels(data, name="ct second run", metadata=metadata, scale=labels.scale)
    assert widget.select_labels(other)
    assert widget.fine_tune.checkpoint_combo.currentData() == str(elsewhere)
    assert widget.select_labels(labels)
    assert Path(widget.fine_tune.checkpoint_combo.currentData()) == case["checkpoint"]


def _result(viewer, image, name: str, prediction: np.ndarray):
    """A model result layer as the Segment dock makes it."""
    data, kwargs, _ = labels_layer_data(prediction.copy(), image, name=name)
    kwargs["metadata"].update(prediction=prediction.copy(), model={"name": name, "arch": "unet"})
    return viewer.add_labels(data, **kwargs)


def test_follows_the_newest_model_result_never_the_reference(make_napari_viewer, qtbot, case):
    viewer = make_napari_viewer()
    volume = read_volume(case["ct"])
    data, kwargs, _ = image_layer_data(volume, name="ct")
    image = viewer.add_image(data, **kwargs)
    reference = np.asarray(to_canonical(case["reference"], case["affine"])[0])
    data, kwargs, _ = labels_layer_data(reference, image, name="manual", role="reference")
    manual = viewer.add_labels(data, **kwargs)  # opened before segmenting
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.labels_layer is manual and "reference" in widget.editing_label.text()
    assert manual.contour == 2  # a reference is drawn as contours

    first = _result(viewer, image, "ct pancreas/tumour [a]", case["prediction"])
    assert widget.labels_layer is first
    assert "ct pancreas/tumour [a]" in widget.editing_label.text()
    assert "model result" in widget.editing_label.text()
    viewer.add_labels(np.zeros((3, 8, 8), np.uint8), name="another CT's labels")
    assert widget.labels_layer is first
    second = _result(viewer, image, "ct pancreas/tumour [b]", case["prediction"])
    assert widget.labels_layer is second
    assert second.contour == 0 and not np.allclose(
        second.colormap.map(np.array([1]))[0], manual.colormap.map(np.array([1]))[0]
    )
    widget.correct.paint_pancreas()
    assert viewer.layers.selection.active is second  # painting goes into the model result

    viewer.layers.remove(second)
    assert widget.labels_layer is first  # not back to the reference
    viewer.layers.remove(first)
    assert widget.labels_layer is manual


def test_labels_of_another_ct_on_the_same_grid_are_not_taken_for_this_ones(
    make_napari_viewer, qtbot, case, tmp_path
):
    """Two phases of one study can share a grid: a tester's labels of one CT were reviewed,
    exported and learnt from with the other without a word."""
    viewer = make_napari_viewer()
    venous_path = tmp_path / "venous.nii"
    nib.save(nib.load(case["ct"]), venous_path)
    data, kwargs, _ = image_layer_data(read_volume(case["ct"]), name="arterial")
    arterial = viewer.add_image(data, **kwargs)
    result = _result(viewer, arterial, "arterial pancreas/tumour [a]", case["prediction"])
    data, kwargs, _ = image_layer_data(read_volume(venous_path), name="venous")
    venous = viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)

    widget.image_combo.value = arterial
    assert _same(widget.labels_layer, result)
    assert widget.editing_label.text().startswith("editing")
    widget.image_combo.value = venous
    assert "made on another open CT (ct.nii)" in widget.editing_label.text()
    own = _result(viewer, venous, "venous pancreas/tumour [a]", case["prediction"])
    assert _same(widget.labels_layer, own)  # its own result is taken as it comes
    assert widget.editing_label.text().startswith("editing")
    viewer.layers.remove(own)
    assert not _same(widget.labels_layer, own)
    assert "made on another open CT" in widget.editing_label.text()


def test_orientation_markers_follow_the_displayed_axes(make_napari_viewer, case):
    """Axial view: anterior at the top, the patient's right on the left (issue 14.11)."""
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)  # the Review dock puts the markers on the canvas
    _open(viewer, case)
    assert widget.session is not None
    overlay = viewer.canvas.overlays.text
    assert overlay.visible and overlay.text.endswith("left R, right L\ntop A, bottom P")
    # the slider names the slices it steps through, not napari's "-3"
    assert tuple(viewer.dims.axis_labels) == ("axial", "coronal", "sagittal")
    viewer.dims.order = (1, 0, 2)  # a coronal view: the head at the top, as radiologists read it
    assert tuple(viewer.scene.camera.orientation2d) == ("up", "right")
    assert overlay.text.endswith("left R, right L\ntop S, bottom I")
    viewer.scene.camera.orientation2d = ("down", "right")  # the user's own choice is followed
    assert overlay.text.endswith("top I, bottom S")
    viewer.dims.order = (0, 1, 2)  # back to axial: anterior at the top again
    assert tuple(viewer.scene.camera.orientation2d) == ("down", "right")
    assert overlay.text.endswith("top A, bottom P")
    viewer.dims.ndisplay = 3
    assert not overlay.visible
    viewer.dims.ndisplay = 2
    # an image from another reader: nobody knows its orientation (a tester saw an upside-down
    # slice labelled "top A, bottom P")
    other = viewer.add_image(np.zeros((3, 8, 8)), name="other")
    assert overlay.text.endswith("top A, bottom P\n(not for other: from another reader)")
    for layer in list(viewer.layers):
        layer.visible = layer is other
    assert overlay.text == "orientation: unknown (other came from another reader)"


def test_labels_with_corrections_opened_into_an_empty_dock_are_not_a_newer_result(
    make_napari_viewer, qtbot
):
    """After Restore, the dock chose the restored layer as it came and then said "A newer
    result, '<that layer>', is open: your corrections stay here" about the layer itself."""
    image, truth = make_phantom(seed=1, shape=(32, 32, 8), spacing=(4.0, 4.0, 3.0))
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(image, name="ct")
    ct = viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    prediction = np.array(to_canonical(truth.array, truth.affine)[0])
    restored = prediction.copy()
    restored[4] = 0  # a correction, as the autosave brings it back
    data, kwargs, _ = labels_layer_data(restored, ct, name="ct pancreas/tumour")
    kwargs["metadata"].update(prediction=prediction)
    labels = viewer.add_labels(data, **kwargs)
    assert widget.labels_layer is labels and widget.session.edited == [4]
    assert "newer result" not in widget.editing_label.text()

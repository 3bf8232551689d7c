"""Segment dock widget: layers with the CT's geometry, cancel, no overwrite of edited labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from napari.layers import Image, Labels

from napari_dsms._layers import image_layer_data
from napari_dsms._widgets import _worker
from napari_dsms._widgets import segment as segment_module
from napari_dsms._widgets.segment import BROWSE, SegmentWidget
from src_models import build_model
from src_models.inference.devices import available_devices
from src_models.io import Volume, read_volume
from src_models.models import store
from src_models.models.checkpoints import model_card, read_metadata, save_checkpoint
from src_models.phantom import make_phantom

PREPROCESSING = {"hu_window": [0.0, 255.0], "spacing_mm": 3.0}
TIMEOUT_MS = 120_000


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch) -> Path:
    """A user model folder with tiny DSMSC and U-Net checkpoints, and no bundled ones."""
    folder = tmp_path / "models"
    monkeypatch.setenv("DSMS_MODEL_DIR", str(folder))
    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "bundled")
    torch.manual_seed(0)
    for arch in ("dsmsc_unet", "unet"):
        model = build_model(arch, width=4, depth=2)
        save_checkpoint(folder / f"tiny_{arch}.pt", model, preprocessing=PREPROCESSING)
    return folder


def _phantom_layer(viewer, slices: int = 6) -> Image:
    image, _ = make_phantom(seed=2, shape=(48, 40, slices), spacing=(3.0, 3.0, 3.0))
    data, kwargs, _ = image_layer_data(image, name="phantom")
    return viewer.add_image(data, **kwargs)


def _widget(viewer, model_dir: Path, arch: str = "dsmsc_unet") -> SegmentWidget:
    widget = SegmentWidget(viewer)
    assert widget.select_checkpoint(model_dir / f"tiny_{arch}.pt")
    widget.device_combo.setCurrentText("cpu")
    return widget


def _run(qtbot, widget: SegmentWidget) -> Labels:
    with qtbot.waitSignal(widget.segmented, timeout=TIMEOUT_MS) as blocker:
        widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    return blocker.args[0]


def _assert_same_geometry(layer, image: Image) -> None:
    assert layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_array_equal(layer.metadata["affine"], image.metadata["affine"])
    assert layer.metadata["source"] == image.metadata["source"]


def test_segmenting_the_phantom_adds_editable_labels_and_reconstruction(
    make_napari_viewer, qtbot, model_dir
):
    viewer = make_napari_viewer()
    image = _phantom_layer(viewer)
    widget = _widget(viewer, model_dir)
    labels = _run(qtbot, widget)

    assert labels.name == "phantom pancreas/tumour [tiny_dsmsc_unet]"
    assert labels.data.dtype == np.uint8
    _assert_same_geometry(labels, image)
    prediction = labels.metadata["prediction"]
    np.testing.assert_array_equal(prediction, labels.data)
    assert not np.shares_memory(prediction, labels.data)
    assert labels.metadata["model"]["arch"] == "dsmsc_unet"
    assert Path(labels.metadata["model"]["checkpoint"]).name == "tiny_dsmsc_unet.pt"
    assert viewer.layers.selection.active is labels
    assert labels.selected_label == 1 and labels.mode == "paint"
    assert labels.colormap.map(np.array([1]))[0, 3] > 0  # fixed pancreas colour, opaque

    reconstruction = viewer.layers["phantom reconstruction [tiny_dsmsc_unet]"]
    error = viewer.layers["phantom error of reconstruction [tiny_dsmsc_unet]"]
    for layer in (reconstruction, error):
        assert isinstance(layer, Image)
        _assert_same_geometry(layer, image)
    assert not error.visible
    # the error map is scaled to its own spread: only the rarest errors saturate
    low, high = error.contrast_limits
    restored = np.asarray(error.data, dtype=np.float32)
    restored = restored[restored > 0]
    assert 0 < low < high
    assert np.mean(restored >= high) < 0.02 and np.mean(restored <= low) > 0.3
    assert "restoration decoder" in widget.readout.text()
    assert "restoration decoder" in widget.readout.toolTip()
    assert 0 <= float(reconstruction.data.min()) and float(reconstruction.data.max()) <= 1
    assert "mL" in widget.readout.text() and "cpu" in widget.readout.text()
    assert [layer.name for layer in viewer.layers][-1] == labels.name
    assert len(widget.image_combo.choices) == 1  # result layers are not offered as inputs

    # the readout's volumes describe the labels layer: withdrawn once it is gone, not before
    viewer.layers.remove(error)
    assert "mL" in widget.readout.text()
    viewer.layers.remove(labels)
    assert "mL" not in widget.readout.text() and "was removed" in widget.readout.text()


def test_a_second_run_never_overwrites_edited_labels(make_napari_viewer, qtbot, model_dir):
    viewer = make_napari_viewer()
    _phantom_layer(viewer)
    widget = _widget(viewer, model_dir, arch="unet")
    first = _run(qtbot, widget)
    again = _run(qtbot, widget)
    assert again is first  # unedited: data replaced in place
    assert not [n for n in viewer.layers if "reconstruction" in n.name]  # U-Net has no decoder

    from napari_dsms._widgets.review import ReviewWidget

    review = ReviewWidget(viewer)
    qtbot.addWidget(review)
    edited = first.data.copy()
    edited[2, 5:9, 5:9] = 2
    first.data = edited
    second = _run(qtbot, widget)
    assert second is not first and second.name == "phantom pancreas/tumour [tiny_unet] (2)"
    np.testing.assert_array_equal(first.data, edited)
    np.testing.assert_array_equal(second.data, second.metadata["prediction"])
    # the corrections stay the layer painted and reviewed (a tester's next stroke went into
    # the new result, segmented only to compare)
    assert viewer.layers.selection.active is first
    assert review.labels_layer is first and "A newer result" in review.editing_label.text()


def test_cancel_stops_between_batches_and_adds_no_layer(make_napari_viewer, qtbot, model_dir):
    viewer = make_napari_viewer()
    _phantom_layer(viewer, slices=40)
    widget = _widget(viewer, model_dir)
    widget.batch_spin.setValue(1)
    seen = []

    def cancel_after_first(value):
        seen.append(value)
        if value[0] >= 1:
            widget.cancel()

    widget.run()
    widget.worker.yielded.connect(cancel_after_first)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen and seen[-1][0] < 40
    assert [type(layer) for layer in viewer.layers] == [Image]
    assert "Cancelled" in widget.readout.text()
    assert widget.run_button.isEnabled()


def test_failures_become_notifications(make_napari_viewer, qtbot, model_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    viewer = make_napari_viewer()
    _phantom_layer(viewer)
    widget = _widget(viewer, model_dir)
    (model_dir / "tiny_dsmsc_unet.pt").write_bytes(b"damaged after it was chosen")
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(shown) == 1 and "tiny_dsmsc_unet.pt" in shown[0]
    assert len(viewer.layers) == 1
    bogus = model_dir / "bogus.pt"
    bogus.write_text("not a checkpoint")
    assert widget.select_checkpoint(bogus) is False
    assert len(shown) == 2


def test_menus_follow_the_viewer_and_the_model_folder(make_napari_viewer, model_dir):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert len(widget.image_combo.choices) == 0 and not widget.run_button.isEnabled()
    image = _phantom_layer(viewer)
    assert widget.image_combo.current_choice == "phantom"
    image.name = "renamed"
    assert widget.image_combo.current_choice == "renamed"

    widget.arch_combo.setCurrentText("drs_unet")
    assert "restoration decoder" in widget.arch_label.text()
    assert widget.checkpoint is None and not widget.run_button.isEnabled()
    torch.manual_seed(0)
    new = save_checkpoint(
        model_dir / "fine_tuned.pt",
        build_model("drs_unet", width=4, depth=2),
        preprocessing=PREPROCESSING,
    )
    widget.refresh_checkpoints()
    assert Path(widget.checkpoint) == new and widget.run_button.isEnabled()
    widget.arch_combo.setCurrentText("unet")
    assert "no restoration decoder" in widget.arch_label.text()
    assert Path(widget.checkpoint).name == "tiny_unet.pt"

    assert [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())] == (
        available_devices()
    )
    viewer.layers.remove(image)
    assert len(widget.image_combo.choices) == 0


def test_browse_picks_a_file_and_its_architecture(
    make_napari_viewer, model_dir, tmp_path, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    torch.manual_seed(0)
    chosen = save_checkpoint(
        elsewhere / "colleague.pt",
        build_model("kcmdrs_unet", width=4, depth=2),
        preprocessing=PREPROCESSING,
    )
    monkeypatch.setattr(
        segment_module.QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(chosen), "")
    )
    widget = SegmentWidget(make_napari_viewer())
    browse = widget.checkpoint_combo.findData(segment_module.BROWSE)
    widget.checkpoint_combo.setCurrentIndex(browse)
    widget.checkpoint_combo.activated.emit(browse)
    assert widget.arch_combo.currentText() == "kcmdrs_unet"
    assert Path(widget.checkpoint) == chosen.resolve()
    widget.refresh_checkpoints()  # a browsed file stays listed
    assert Path(widget.checkpoint) == chosen.resolve()


def test_real_ct_keeps_its_geometry(make_napari_viewer, qtbot, model_dir, nih_ct):
    ct = read_volume(nih_ct)
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ [0, 0, 40] + ct.affine[:3, 3]
    crop = Volume(ct.array[:, :, 40:44], affine, source=str(nih_ct), description="NIH 0001")
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(crop, name="nih")
    image = viewer.add_image(data, **kwargs)
    widget = _widget(viewer, model_dir, arch="unet")
    labels = _run(qtbot, widget)
    _assert_same_geometry(labels, image)
    assert labels.data.shape == (4, 512, 512)


def test_docked_from_the_manifest_through_napari_proxies(make_napari_viewer, qtbot, model_dir):
    """napari hands manifest widgets a viewer proxy that wraps every layer it returns."""
    viewer = make_napari_viewer()
    image = _phantom_layer(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dsms", "Segment")
    assert isinstance(widget, SegmentWidget)
    assert widget.select_checkpoint(model_dir / "tiny_unet.pt")
    widget.device_combo.setCurrentText("cpu")
    first = _run(qtbot, widget)
    first_layer = viewer.layers[first.name]
    assert viewer.layers.selection.active is first_layer and first_layer.mode == "paint"
    _assert_same_geometry(first_layer, image)
    assert _run(qtbot, widget).name == first.name  # unedited: replaced in place
    edited = first_layer.data.copy()
    edited[1, 3:6, 3:6] = 1 - edited[1, 3:6, 3:6].clip(0, 1)
    first_layer.data = edited
    assert _run(qtbot, widget).name == "phantom pancreas/tumour [tiny_unet] (2)"
    assert len([layer for layer in viewer.layers if isinstance(layer, Labels)]) == 2


def test_a_plain_image_layer_is_taken_as_radiological_slices(make_napari_viewer, qtbot, model_dir):
    """A layer from another reader (no file geometry) keeps its own scale and position."""
    image_volume, _ = make_phantom(seed=4, shape=(40, 36, 5), spacing=(3.0, 3.0, 3.0))
    data, _, _ = image_layer_data(image_volume)
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.array(data), name="plain", scale=(3.0, 3.0, 3.0), translate=(10.0, -5.0, 2.0)
    )
    widget = _widget(viewer, model_dir, arch="unet")
    labels = _run(qtbot, widget)
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    np.testing.assert_array_equal(labels.metadata["prediction"], labels.data)
    # its orientation was assumed, and the readout says so (a tester's upside-down slice got
    # wrong labels without a word)
    assert "Geometry assumed: plain came from another reader" in widget.readout.text()


def test_a_2d_image_layer_is_segmented_as_one_slice(make_napari_viewer, qtbot, model_dir):
    """A single slice from any reader (here a plain 2D array) gets labels on its pixels."""
    image_volume, _ = make_phantom(seed=4, shape=(40, 36, 5), spacing=(3.0, 3.0, 3.0))
    data, _, _ = image_layer_data(image_volume)
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.array(data[2]), name="one slice", scale=(3.0, 3.0), translate=(-5.0, 2.0)
    )
    widget = _widget(viewer, model_dir, arch="unet")
    assert widget.image_combo.current_choice == "one slice"
    labels = _run(qtbot, widget)
    assert labels.data.shape == (1, *image.data.shape)
    np.testing.assert_allclose(labels.scale[-2:], image.scale)
    np.testing.assert_allclose(labels.translate[-2:], image.translate)
    assert set(np.unique(labels.data)) <= {0, 1, 2}


def test_results_of_two_models_never_mix(make_napari_viewer, qtbot, model_dir):
    viewer = make_napari_viewer()
    _phantom_layer(viewer)
    widget = _widget(viewer, model_dir)
    widget.probabilities_check.setChecked(True)
    first = _run(qtbot, widget)
    names = {layer.name for layer in viewer.layers}
    assert {
        "phantom reconstruction [tiny_dsmsc_unet]",
        "phantom error of reconstruction [tiny_dsmsc_unet]",
        "phantom pancreas probability [tiny_dsmsc_unet]",
        "phantom tumour probability [tiny_dsmsc_unet]",
    } <= names
    for layer in viewer.layers[1:]:
        assert layer.metadata["model"]["name"] == "tiny_dsmsc_unet"
    # probabilities: a perceptual colour map with a scale, over the CT rather than added to it
    probability = viewer.layers["phantom pancreas probability [tiny_dsmsc_unet]"]
    assert probability.colormap.name == "viridis" and probability.colorbar.visible
    assert str(probability.blending) != "additive"
    before = np.array(first.data)

    # another architecture: its own layer, the first result untouched
    assert widget.select_checkpoint(model_dir / "tiny_unet.pt")
    widget.probabilities_check.setChecked(False)
    second = _run(qtbot, widget)
    assert second is not first and second.name == "phantom pancreas/tumour [tiny_unet]"
    np.testing.assert_array_equal(first.data, before)
    assert first.metadata["model"]["name"] == "tiny_dsmsc_unet"

    # the first model again, without probabilities: its stale probability layers go
    assert widget.select_checkpoint(model_dir / "tiny_dsmsc_unet.pt")
    again = _run(qtbot, widget)
    assert again is first
    names = {layer.name for layer in viewer.layers}
    assert "phantom pancreas probability [tiny_dsmsc_unet]" not in names
    assert "phantom reconstruction [tiny_dsmsc_unet]" in names
    assert "phantom pancreas/tumour [tiny_unet]" in names


def test_deleting_the_ct_while_segmenting_cancels_the_run(make_napari_viewer, qtbot, model_dir):
    viewer = make_napari_viewer()
    image = _phantom_layer(viewer, slices=40)
    widget = _widget(viewer, model_dir)
    widget.batch_spin.setValue(1)
    seen = []
    widget.run()
    assert "Segmenting" in widget.readout.text()

    def delete_image(value):
        seen.append(value)
        if image in viewer.layers:
            viewer.layers.remove(image)

    widget.worker.yielded.connect(delete_image)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen and seen[-1][0] < 40  # stopped early, not run to its end
    assert len(viewer.layers) == 0
    assert "Segmenting" not in widget.readout.text() and "removed" in widget.readout.text()


def test_ensemble_entry_shows_its_card_and_marks_tumour_unvalidated(make_napari_viewer, qtbot):
    """The bundled ensemble from the menu: its card (the checkpoint tooltip), its result, and
    the tumour warning where the radiologist looks (the readout, the status bar's label name,
    the side-car record)."""
    viewer = make_napari_viewer()
    image = _phantom_layer(viewer, slices=3)
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentText("cpu")
    widget.arch_combo.setCurrentText("ensemble")
    assert widget.checkpoint == "ensemble" and "five bundled models" in widget.arch_label.text()
    card = widget.checkpoint_combo.toolTip()
    assert card.startswith("Ensemble: mean probability of 5 models")
    assert "Tumour unvalidated" in card
    labels = _run(qtbot, widget)
    assert labels.name == f"{image.name} pancreas/tumour [ensemble]"
    assert "Tumour unvalidated" in widget.readout.text()
    assert list(labels.features["name"])[2] == "tumour (unvalidated model)"
    assert labels.metadata["model"]["validated_structures"] == ["pancreas"]


def test_a_new_model_worse_on_its_held_out_slices_is_listed_not_chosen(
    make_napari_viewer, model_dir
):
    """A tester's Fine-tune reported the new model worse on the held-out slices (0.677 ->
    0.614, "keep the previous one"), yet the next Segment used it: the dock chose every new
    model in the folder."""
    widget = _widget(make_napari_viewer(), model_dir)
    chosen = widget.checkpoint

    def fine_tuned(name: str, after: float) -> Path:
        record = {
            "metrics_before": {"dice_pancreas": 0.677},
            "metrics_after": {"dice_pancreas": after},
            "holdout_slices": [3, 7],
        }
        return save_checkpoint(
            model_dir / name, build_model("dsmsc_unet", width=4, depth=2),
            preprocessing=PREPROCESSING, provenance={"fine_tune": record},
        )  # fmt: skip

    worse = fine_tuned("tiny_dsmsc_unet-ft-v1.pt", 0.614)
    widget._on_model_folder_changed()
    assert widget.checkpoint == chosen
    listed = [widget.checkpoint_combo.itemData(i) for i in range(widget.checkpoint_combo.count())]
    assert str(worse.resolve()) in {str(Path(p).resolve()) for p in listed if p and p != BROWSE}
    assert "worse there than the model it came from" in model_card(read_metadata(worse))

    better = fine_tuned("tiny_dsmsc_unet-ft-v2.pt", 0.70)
    widget._on_model_folder_changed()
    assert Path(widget.checkpoint).resolve() == better.resolve()


def test_a_model_tuned_on_one_patient_is_chosen_for_that_patient_only(
    make_napari_viewer, model_dir, tmp_path
):
    """A tester's next patient was segmented with the model fine-tuned on the previous one's
    corrections, by default. The dock goes back to the model chosen before for another CT, and
    chooses the tuned one again for its own; a model chosen in the menu stays."""
    viewer = make_napari_viewer()
    layers = {}
    for name in ("first", "second"):
        image, _ = make_phantom(seed=2, shape=(48, 40, 6), spacing=(3.0, 3.0, 3.0))
        source = tmp_path / f"{name}.nii.gz"
        volume = Volume(image.array, image.affine, str(source))
        data, kwargs, _ = image_layer_data(volume, name=name)
        layers[name] = viewer.add_image(data, **kwargs)
    widget = _widget(viewer, model_dir)
    widget.image_combo.value = layers["first"]
    base = widget.checkpoint
    tuned = save_checkpoint(
        model_dir / "tiny_dsmsc_unet-ft-first-v1.pt", build_model("dsmsc_unet", width=4, depth=2),
        preprocessing=PREPROCESSING,
        provenance={"fine_tune": {"source_image": str(tmp_path / "first.nii.gz")}},
    )  # fmt: skip
    widget._on_model_folder_changed()
    assert Path(widget.checkpoint).resolve() == tuned.resolve()

    widget.image_combo.value = layers["second"]
    assert widget.checkpoint == base
    assert "fine-tuned on first.nii.gz, another patient" in widget.readout.text()
    widget.image_combo.value = layers["first"]
    assert Path(widget.checkpoint).resolve() == tuned.resolve()
    assert "chosen again" in widget.readout.text()

    # a CT without a file (the sample, another reader's layer) is not the one tuned on
    image, _ = make_phantom(seed=3, shape=(48, 40, 6), spacing=(3.0, 3.0, 3.0))
    data, kwargs, _ = image_layer_data(Volume(image.array, image.affine, ""), name="sample")
    widget.image_combo.value = viewer.add_image(data, **kwargs)
    assert widget.checkpoint == base
    widget.image_combo.value = layers["first"]

    index = widget.checkpoint_combo.currentIndex()
    widget.checkpoint_combo.activated.emit(index)  # the user's own choice in the menu
    assert "fine-tuned on" not in widget.readout.text()  # the dock's note of its choice goes
    widget.image_combo.value = layers["second"]
    assert Path(widget.checkpoint).resolve() == tuned.resolve()


def test_a_ct_opened_later_is_the_one_segmented(make_napari_viewer, qtbot, model_dir):
    # A tester opened a DICOM series after a NIfTI CT and pressed Segment: the NIfTI CT was
    # segmented again. The dock follows the CT just opened; the Review dock follows its result.
    from napari_dsms._layers import labels_layer_data
    from napari_dsms._widgets.review import ReviewWidget

    viewer = make_napari_viewer()
    first = _phantom_layer(viewer)
    widget = _widget(viewer, model_dir)
    review = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    qtbot.addWidget(review)
    image, _ = make_phantom(seed=3, shape=(40, 40, 8), spacing=(3.0, 3.0, 3.0))
    image.source = "/data/second.nii.gz"
    data, kwargs, _ = image_layer_data(image, name="second")
    second = viewer.add_image(data, **kwargs)
    assert widget.image_layer is second
    labels = _run(qtbot, widget)
    assert review.image_layer is second and review.labels_layer is labels
    # the first CT again, chosen by hand, and a result of the second: review follows the result
    widget.image_combo.value = first
    review.image_combo.value = first
    data, kwargs, _ = labels_layer_data(np.zeros(second.data.shape, np.uint8), second, name="r")
    kwargs["metadata"]["prediction"] = np.zeros(second.data.shape, np.uint8)
    result = viewer.add_labels(data, **kwargs)
    assert review.image_layer is second and review.labels_layer is result
    assert widget.image_layer is first  # a labels layer is not a CT to segment


def test_the_first_model_saved_on_a_fresh_install_is_listed_and_chosen(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    # The model folder did not exist when the dock opened, so it was never watched: the first
    # fine-tuned model never reached the menu and Segment ran the bundled one (a tester).
    folder = tmp_path / "fresh" / "models"
    monkeypatch.setenv("DSMS_MODEL_DIR", str(folder))
    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "bundled")
    widget = SegmentWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    torch.manual_seed(0)
    saved = save_checkpoint(
        folder / "dsmsc_unet-ft-ct-v1.pt", build_model("dsmsc_unet", width=4, depth=2),
        preprocessing=PREPROCESSING,
    )  # fmt: skip
    qtbot.waitUntil(lambda: widget.checkpoint is not None, timeout=10_000)
    assert Path(widget.checkpoint) == saved

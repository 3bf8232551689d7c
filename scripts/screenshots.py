"""Take the user guide's screenshots by running the whole loop in a real napari window.

Open the shared NIH CT, segment it, look at the reconstruction, set a region of interest, score
the slices (triage), correct slices (the manual reference label is painted into them, as a
radiologist's corrections would be), fill between them, run a refine round, export, fine-tune on
the corrections and re-segment; a PNG of the napari window is saved at each stage, plus
``napari-dsms.png`` for the README, all at ``--size`` (a laptop screen by default), and an
overview at ``--overview-size``.
The figures are real runs, so the script also prints what it measured (time, Dice before and
after fine-tuning on the slices that were not corrected).

Needs a screen; on a server use a virtual one::

    xvfb-run -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshots.py

The CT is patient PANCREAS_0001 of NIH Pancreas-CT (Roth et al., TCIA 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0); keep that attribution beside the images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import napari  # noqa: E402
from qtpy.QtCore import QPoint  # noqa: E402
from qtpy.QtWidgets import QApplication, QScrollArea, QWidget  # noqa: E402

from src_models.inference.postprocess import keep_largest_components  # noqa: E402
from src_models.io import read_labels, read_volume  # noqa: E402
from src_models.io.orientation import to_canonical  # noqa: E402
from src_models.metrics import case_metrics  # noqa: E402
from src_models.models.store import resolve_checkpoint  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nih-pancreas-0001"
PLUGIN = "napari-dsms"
DOCKS = ("Load CT", "Segment", "Review and fine-tune")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=DATA / "ct.nii.gz")
    parser.add_argument(
        "--label",
        type=Path,
        default=DATA / "label.nii.gz",
        help="manual label painted in as the corrections",
    )
    parser.add_argument("--model", default="dsmsc_unet", help="bundled name or checkpoint file")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--corrected", type=int, default=10, help="slices to correct")
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps (widget default)")
    parser.add_argument("--seconds", type=int, default=None, help="fine-tune time budget")
    parser.add_argument(
        "--size",
        type=screen_size,
        default=(1366, 768),
        help="window size WIDTHxHEIGHT of the main set (default 1366x768)",
    )
    parser.add_argument(
        "--overview-size",
        type=screen_size,
        default=(1920, 1080),
        help="window size of the overview-WxH.png shot (default 1920x1080)",
    )
    return parser.parse_args()


def screen_size(text: str) -> tuple[int, int]:
    """``"1366x768"`` -> ``(1366, 768)``, the window's width and height in pixels."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1366x768") from None
    return width, height


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Let Qt run (workers report through its event loop) until ``condition`` holds."""
    app = QApplication.instance()
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout_s:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Process events for a moment so that docks, canvas and labels are drawn."""
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def shoot(viewer: napari.Viewer, path: Path) -> None:
    """Save the whole napari window (canvas, layer list and docks) as PNG.

    Notification toasts are closed first: they cover the canvas and say what the text says.
    """
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    settle()
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def shoot_at(
    viewer: napari.Viewer, path: Path, size: tuple[int, int], back: tuple[int, int]
) -> None:
    """Shoot the window resized to ``size``, then give it its ``back`` size again.

    The zoom follows the canvas' height, so that the CT fills the bigger window as it did the
    smaller one.
    """
    window, canvas, camera = viewer.window._qt_window, viewer.window._qt_viewer, viewer.scene.camera
    height, zoom = canvas.height(), camera.zoom
    window.resize(*size)
    settle(1.0)
    camera.zoom = zoom * canvas.height() / height
    shoot(viewer, path)
    window.resize(*back)
    settle(1.0)
    camera.zoom = zoom


def scroll_to(panel: QWidget, child: QWidget) -> None:
    """Scroll a dock panel so that ``child`` is in view."""
    panel.findChild(QScrollArea).ensureWidgetVisible(child, 0, 400)


def scroll_to_top(panel: QWidget, child: QWidget) -> None:
    """Scroll a dock panel so that ``child`` starts at its top (as far as the panel scrolls)."""
    area = panel.findChild(QScrollArea)
    settle()
    area.verticalScrollBar().setValue(child.mapTo(area.widget(), QPoint(0, 0)).y())


def zoom_on(viewer: napari.Viewer, image, mask: np.ndarray, factor: float) -> None:
    """Centre the camera on a mask's in-plane centroid and zoom in, or back out (factor 1)."""
    viewer.reset_view()
    if factor == 1:
        return
    rows, columns = np.nonzero(mask.any(axis=0))
    centre = image.data_to_world((0, rows.mean(), columns.mean()))
    viewer.scene.camera.center = (float(centre[1]), float(centre[2]))
    viewer.scene.camera.zoom *= factor


def corrected_slices(reference: np.ndarray, count: int) -> list[int]:
    """``count`` canonical slices spread evenly over the reference pancreas, head to tail."""
    slices = np.flatnonzero(reference.reshape(reference.shape[0], -1).any(axis=1))
    picks = np.linspace(0, len(slices) - 1, count + 2)[1:-1].round().astype(int)
    return sorted({int(slices[i]) for i in picks})


def dice_on(prediction: np.ndarray, reference: np.ndarray, slices: list[int]) -> float:
    return case_metrics(prediction[slices], reference[slices])["pancreas"].dice


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(tempfile.mkdtemp(prefix="dsms-screenshots-models-"))
    os.environ.setdefault("DSMS_MODEL_DIR", str(model_dir))
    # a journal of its own: a former run's autosave would offer itself over the first picture
    os.environ.setdefault("DSMS_AUTOSAVE_DIR", tempfile.mkdtemp(prefix="dsms-shots-autosave-"))
    export_dir = Path(tempfile.mkdtemp(prefix="dsms-screenshots-export-"))
    checkpoint = resolve_checkpoint(args.model)

    viewer = napari.Viewer(title="napari-dsms")
    viewer.window._qt_window.resize(*args.size)
    # Docked from the plugin's manifest, exactly as Plugins > napari-dsms does it.
    docks = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True) for name in DOCKS
    }
    load, segment, review = (docks[name][1] for name in DOCKS)

    def show_dock(name: str) -> None:
        docks[name][0].raise_()

    # 1. open
    load.load(args.ct)
    wait_until(lambda: not load.busy, 120, "reading the CT")
    image = viewer.layers[-1]
    show_dock("Load CT")
    reference_volume = read_labels(args.label, read_volume(args.ct))
    reference = np.asarray(to_canonical(reference_volume.array, reference_volume.affine)[0])
    middle = int(np.flatnonzero(reference.reshape(reference.shape[0], -1).any(axis=1)).mean())
    review.go_to_slice(middle)
    shoot(viewer, args.out / "01-open.png")

    # 2. segment
    show_dock("Segment")
    segment.select_checkpoint(checkpoint)
    started = time.perf_counter()
    segmented: list = []
    segment.segmented.connect(segmented.append)
    segment.run()
    wait_until(lambda: bool(segmented) and not segment.running, 1200, "segmentation")
    print(f"segmentation: {time.perf_counter() - started:.1f} s")
    labels = viewer.layers[segmented[-1].name]
    review.select_labels(labels)
    review.go_to_slice(middle)
    shoot(viewer, args.out / "02-segment.png")

    # 3. reconstruction (DRS models): the restored input beside the CT
    reconstruction = review.export.reconstruction_layer()
    if reconstruction is not None:
        labels.visible = False
        reconstruction.visible = True
        shoot(viewer, args.out / "03-reconstruction.png")
        reconstruction.visible = False
        labels.visible = True

    # 4. region of interest: the reference pancreas's slices (a few more each side) and a box
    show_dock("Review and fine-tune")
    prediction = np.array(labels.metadata["prediction"])
    with_pancreas = np.flatnonzero(reference.reshape(reference.shape[0], -1).any(axis=1))
    rows, columns = np.nonzero(reference.any(axis=0))
    region = review.region
    region.first_spin.setValue(max(int(with_pancreas[0]) - 3, 0))
    region.last_spin.setValue(min(int(with_pancreas[-1]) + 3, reference.shape[0] - 1))
    box = region.draw_box()
    top, bottom = rows.min() - 20, rows.max() + 20
    left, right = columns.min() - 20, columns.max() + 20
    corners = np.array(
        [
            [middle, top, left],
            [middle, top, right],
            [middle, bottom, right],
            [middle, bottom, left],
        ],
        dtype=float,
    )
    box.add_rectangles(np.array([box.world_to_data(image.data_to_world(c)[-2:]) for c in corners]))
    box.mode = "pan_zoom"
    region.set_region()
    cleared = region.clear_outside()
    print(f"region of interest: {region.status.text()}; {cleared} voxels cleared outside it")
    viewer.layers.selection.active = labels
    scroll_to_top(review, region)
    shoot(viewer, args.out / "region.png")

    # 5. triage: score every slice, list and chart the suspects, go to the first
    if review.triage.score() is None:
        raise SystemExit(f"triage refused: {review.triage.status.text()}")
    wait_until(lambda: review.triage._worker is None, 1200, "triage")
    review.triage.next_suspect()
    scroll_to_top(review, review.triage)
    shoot(viewer, args.out / "triage.png")

    # 6. correct: paint the manual reference into a few slices
    slices = corrected_slices(reference, args.corrected)
    for k in slices:
        labels.data[k] = reference[k]
    labels.refresh()
    review.refresh_status()
    review.go_to_slice(slices[len(slices) // 2])
    review.navigate.toggle_reviewed()
    review.correct.paint_pancreas()
    zoom_on(viewer, image, reference, 2.0)
    scroll_to_top(review, review.navigate)
    shoot(viewer, args.out / "04-correct.png")

    # 7. fill between the corrected slices, shown on a filled slice, then undone (Ctrl+Z) so
    #    that fine-tuning below learns from the corrections alone
    filled = review.triage.fill_between()
    review.go_to_slice((slices[len(slices) // 2] + slices[len(slices) // 2 + 1]) // 2)
    scroll_to_top(review, review.triage)
    shoot(viewer, args.out / "fill-between.png")
    print(f"fill between: {filled} voxels; {review.triage.status.text()}")
    labels.undo()
    review.refresh_status()

    # 7b. one refine round (learn, fill between, the model beyond), shown, then undone too
    rounds = review.triage.refine_round
    started = time.perf_counter()
    if rounds.start() is None:
        raise SystemExit(f"refine round refused: {rounds.status.text()}")
    wait_until(lambda: not rounds.is_running, 1200, "refine round")
    print(f"refine round: {time.perf_counter() - started:.0f} s; {rounds.status.text()}")
    every = list(range(len(reference)))
    print(f"  whole-volume pancreas Dice {dice_on(np.asarray(labels.data), reference, every):.3f}")
    review.go_to_slice((slices[len(slices) // 2] + slices[len(slices) // 2 + 1]) // 2)
    scroll_to_top(review, review.triage.fill_button)
    shoot(viewer, args.out / "refine-round.png")
    labels.undo()
    review.refresh_status()
    zoom_on(viewer, image, reference, 1)

    # 8. export (the side-car is quoted in the user guide)
    written = review.export.export_labels(export_dir / "ct_corrected.nii.gz")
    print(f"exported {written} and {written.with_name('ct_corrected.json')}")
    print(written.with_name("ct_corrected.json").read_text())

    # 9. fine-tune on the corrections
    if args.steps is not None:
        review.fine_tune.steps_spin.setValue(args.steps)
    if args.seconds is not None:
        review.fine_tune.budget_spin.setValue(args.seconds)
    started = time.perf_counter()
    if review.fine_tune.fine_tune() is None:
        raise SystemExit(f"fine-tuning refused: {review.fine_tune.fine_tune_label.text()}")
    wait_until(lambda: not review.fine_tune.is_busy, 3600, "fine-tuning")
    seconds = time.perf_counter() - started
    print(f"fine-tuning: {seconds:.0f} s; {review.fine_tune.fine_tune_label.text()}")
    if review.fine_tune.last_checkpoint is None:
        raise SystemExit("fine-tuning saved no checkpoint")
    scroll_to_top(review, review.fine_tune)
    shoot(viewer, args.out / "05-fine-tune.png")

    # 10. re-segment with the fine-tuned model and compare with the corrections
    results: list = []
    review.fine_tune.resegmented.connect(lambda new, corrected: results.append(new))
    review.fine_tune.resegment()
    wait_until(lambda: bool(results) and not review.fine_tune.is_busy, 1200, "re-segmentation")
    new_labels = results[-1]
    new_labels.visible, labels.visible = True, False
    review.go_to_slice(middle)
    review.compare.compute_metrics()
    scroll_to(review, review.compare.metrics_label)
    shoot(viewer, args.out / "06-resegment.png")

    # README screenshot: the CT with the fine-tuned result over it and the plugin's docks
    zoom_on(viewer, image, reference, 1.6)
    shoot(viewer, args.out / "napari-dsms.png")
    width, height = args.overview_size
    shoot_at(viewer, args.out / f"overview-{width}x{height}.png", args.overview_size, args.size)

    # what the run measured: the slices nobody corrected, against the manual reference
    others = [k for k in range(reference.shape[0]) if k not in set(slices)]
    after = np.asarray(new_labels.data)
    print(f"corrected slices: {slices}")
    print(f"pancreas Dice on the other {len(others)} slices (the volume minus the corrected):")
    print(f"  model output      {dice_on(prediction, reference, others):.3f}")
    print(f"  after fine-tuning {dice_on(after, reference, others):.3f}")
    print(
        f"  after + keep largest component "
        f"{dice_on(keep_largest_components(after), reference, others):.3f}"
    )
    viewer.close()


if __name__ == "__main__":
    main()

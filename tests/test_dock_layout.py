"""The three docks together on a laptop screen (1366 x 768): each usable, nothing clipped."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QApplication, QLabel

from napari_dsms._widgets._scroll import MIN_VISIBLE_HEIGHT, STACK_PROPERTY

PLUGIN = "napari-dsms"
LAPTOP = (1366, 768)
#: The Review dock, where the work happens, shows at least its Layers box and more.
REVIEW_MIN_HEIGHT = 200


def _settle(qtbot) -> None:
    for _ in range(10):
        QApplication.processEvents()
        qtbot.wait(20)


def _clipped(label: QLabel) -> bool:
    return label.isVisible() and label.height() < label.heightForWidth(label.width())


@pytest.mark.parametrize("with_ct", [False, True])
def test_all_docks_fit_a_laptop_screen(make_napari_viewer, qtbot, nih_ct, with_ct):
    """Stacked (as asked for with ``make demo``'s tabify=False), each dock is still usable."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    viewer.window._qt_window.setProperty(STACK_PROPERTY, True)
    docks = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name)
        for name in ("Load CT", "Segment", "Review and fine-tune")
    }
    load = docks["Load CT"][1]
    if with_ct:
        load.load(nih_ct)
        qtbot.waitUntil(lambda: not load.busy, timeout=60_000)
    _settle(qtbot)
    heights = {name: dock.height() for name, (dock, _) in docks.items()}
    assert all(height >= MIN_VISIBLE_HEIGHT for height in heights.values()), heights
    assert heights["Review and fine-tune"] >= REVIEW_MIN_HEIGHT, heights
    assert not _clipped(load.info), "the Load CT info is cut off"
    assert not _clipped(docks["Segment"][1].arch_label), "the architecture text is cut off"
    for name, (_, widget) in docks.items():
        assert widget.width() >= widget.content.minimumSizeHint().width(), name  # no h-scroll


def test_docks_opened_one_by_one_on_a_laptop_become_tabs(make_napari_viewer, qtbot):
    """From the Plugins menu, one after another, the docks stacked and the Review dock showed
    only its first box at 1366 x 768 (a tester); now each joins the others as a tab, in front."""
    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    main.resize(*LAPTOP)
    for name in ("Load CT", "Segment", "Review and fine-tune"):
        dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        _settle(qtbot)
    assert len(main.tabifiedDockWidgets(dock)) == 2
    assert dock.isVisible() and dock.height() >= 500, dock.height()
    assert not dock.visibleRegion().isEmpty()  # the one just opened is the tab in front
    # closed with its x and shown again as napari's Plugins menu does: in front again
    dock.close()
    _settle(qtbot)
    segment = viewer.window.dock_widgets["Segment (napari-dsms)"].parent()
    segment.raise_()
    dock.setVisible(True)
    _settle(qtbot)
    assert not dock.visibleRegion().isEmpty() and segment.visibleRegion().isEmpty()


def test_the_demo_tabs_the_docks_on_a_laptop_so_the_review_dock_gets_the_height(
    make_napari_viewer, qtbot
):
    from napari_dsms.demo import open_demo_viewer

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    open_demo_viewer(viewer=viewer, tabify=True)
    _settle(qtbot)
    docks = viewer.window.dock_widgets
    review = next(dock for name, dock in docks.items() if "Review" in name)
    assert review.isVisible() and review.height() >= 500, review.height()
    tabbed = viewer.window._qt_window.tabifiedDockWidgets(review.parent())
    assert len(tabbed) == 2  # Load CT and Segment are tabs beside it


def test_a_dock_grows_with_its_controls(make_napari_viewer, qtbot, nih_ct):
    """Alone in the column, Load CT shows the whole CT information once a CT is open: no scroll."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    _, load = viewer.window.add_plugin_dock_widget(PLUGIN, "Load CT")
    _settle(qtbot)
    load.load(nih_ct)
    qtbot.waitUntil(lambda: not load.busy, timeout=60_000)
    _settle(qtbot)
    assert load.info.text().count("\n") >= 3, load.info.text()
    assert load._scroll.verticalScrollBar().maximum() == 0, "the CT information scrolls"
    assert load.height() >= load.content.sizeHint().height()


def test_the_fine_tune_report_is_not_cut_off_on_a_laptop(make_napari_viewer, qtbot):
    """A several-line report under the loss chart shows whole (it lost its first and last
    lines at 1366 x 768)."""
    from napari_dsms.demo import open_demo_viewer

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    open_demo_viewer(viewer=viewer, tabify=True)
    review = next(w for name, w in viewer.window.dock_widgets.items() if "Review" in name)
    for step in range(1, 400):
        review.fine_tune.loss_plot.add(step, 1.0 / step)
    _settle(qtbot)  # laid out before the report arrives, as after a real run
    label = review.fine_tune.fine_tune_label
    label.setText(  # a real run's report (scripts/screenshots.py), cut at both ends once
        "saved dsmsc_unet-ft-ct-v2.pt: 400 steps in 56 s; held-out pancreas Dice 0.411 -> "
        "0.883\nThe held-out Dice compares each model with your own labels on 2 corrected "
        "slice(s) it did not train on (slice 34, 66), segmented as Segment would label them "
        "(cropped to the body, on the CT's grid).\nKeep the new model: it agrees better with "
        "your corrections."
    )
    review.reveal(review.fine_tune.resegment_button)
    _settle(qtbot)
    assert not _clipped(label), (label.height(), label.heightForWidth(label.width()))
    # scrolled so that the whole report and the button after it are in view
    viewport = review._scroll.viewport()
    for widget in (label, review.fine_tune.resegment_button):
        top = widget.mapTo(viewport, widget.rect().topLeft()).y()
        bottom = widget.mapTo(viewport, widget.rect().bottomLeft()).y()
        assert 0 <= top and bottom <= viewport.height(), (widget, top, bottom)


def test_a_finished_round_scrolls_its_report_into_view(make_napari_viewer, qtbot):
    """At 1366 x 768 the Review dock scrolls, and a round's report ended below the fold."""
    from napari_dsms.demo import open_demo_viewer

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    open_demo_viewer(viewer=viewer, tabify=False)  # three docks share the column: it scrolls
    review = next(w for name, w in viewer.window.dock_widgets.items() if "Review" in name)
    _settle(qtbot)
    status = review.triage.refine_round.status
    viewport = review._scroll.viewport()

    def in_view() -> bool:
        top = status.mapTo(viewport, status.rect().topLeft()).y()
        return 0 <= top and top + status.height() <= viewport.height()

    review._scroll.verticalScrollBar().setValue(0)
    _settle(qtbot)
    assert not in_view()  # the premise: the status line starts below the fold
    status.setText("10 corrected slices kept; 12-30 changed")
    review.reveal(status)
    _settle(qtbot)
    assert in_view()


def test_fill_between_scrolls_its_result_into_view(make_napari_viewer, qtbot):
    """With the triage list filled, Fill between's result line lay below the fold at 1366 x 768
    and only the toast said what it did (a tester)."""
    import numpy as np

    from napari_dsms._layers import labels_layer_data
    from napari_dsms.demo import open_demo_viewer

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    open_demo_viewer(viewer=viewer, tabify=False)
    review = next(w for name, w in viewer.window.dock_widgets.items() if "Review" in name)
    ct = review.image_layer
    prediction = np.zeros(ct.data.shape, dtype=np.uint8)
    data, kwargs, _ = labels_layer_data(prediction.copy(), ct, name="ct pancreas/tumour")
    kwargs["metadata"].update(prediction=prediction)
    labels = viewer.add_labels(data, **kwargs)
    review.select_labels(labels)
    middle = ct.data.shape[1] // 2
    for k in (2, 8):  # two corrected slices with a gap to fill
        labels.data[k, middle - 5 : middle + 5, middle - 5 : middle + 5] = 1
    labels.events.data(value=labels.data)
    status = review.triage.status
    viewport = review._scroll.viewport()
    review._scroll.verticalScrollBar().setValue(0)
    _settle(qtbot)
    assert status.mapTo(viewport, status.rect().topLeft()).y() > viewport.height()  # premise
    assert review.triage.fill_between() > 0
    _settle(qtbot)
    top = status.mapTo(viewport, status.rect().topLeft()).y()
    assert 0 <= top and top + status.height() <= viewport.height()


@pytest.mark.parametrize("tabify", [False, True])
def test_tabbed_docks_take_the_column_when_their_controls_grow(
    make_napari_viewer, qtbot, nih_ct, tabify
):
    """Tabbed at 1366 x 768, the Load CT dock kept the 148 pixels of its first controls once a
    CT was open (and Segment its height before the result), so the CT's information and the
    segmentation's readout were cut off until the user switched tabs (a tester)."""
    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    main.resize(*LAPTOP)
    docks = {}
    for name in ("Load CT", "Segment", "Review and fine-tune"):
        # one by one from the Plugins menu, or tabbed by napari (``tabify=True``)
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=tabify)
        _settle(qtbot)
    dock, load = docks["Load CT"]
    dock.raise_()
    _settle(qtbot)
    load.load(nih_ct)
    qtbot.waitUntil(lambda: not load.busy, timeout=60_000)
    _settle(qtbot)
    assert dock.height() >= 500, dock.height()
    assert not _clipped(load.info), "the Load CT info is cut off"

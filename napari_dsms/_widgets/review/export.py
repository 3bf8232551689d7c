"""Export panel: labels or reconstruction as NIfTI on the source CT's grid, with a side-car.

Labels go through :func:`napari_dsms._writer.export_labels`, the plugin's one labels export
(NIfTI with the CT's own affine, or DICOM-SEG of the CT's series for a ``.dcm`` name; it also
retires the autosave journal), the reconstruction through :func:`~src_models.io.write_image`;
the JSON side-car (:meth:`~napari_dsms._session.ReviewSession.sidecar`) records the model, the
edited and reviewed slices and the volumes. The dialog proposes the folder of the last export
(else the home folder), never the source data's; the source CT is never overwritten, an
existing file only after asking.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from src_models import corrections
from src_models.io import VolumeError, write_image
from src_models.io.windows import unit_to_hu
from src_models.models.checkpoints import CheckpointError, read_metadata

from ..._layers import (
    MODEL,
    RECONSTRUCTION,
    SOURCE,
    layer_to_volume,
    reference_volume,
)
from ..._results import layer_name, model_name
from ..._writer import export_labels as export_layer_labels
from .._worker import run_responsive
from ._common import refuse

if TYPE_CHECKING:
    from . import ReviewWidget


NIFTI_FILTER = "NIfTI (*.nii.gz *.nii)"
SEG_FILTER = "DICOM-SEG of the CT's series (*.dcm)"


def replace_question(path: Path) -> str:
    """The question before replacing ``path``, naming the side-car that is really written."""
    return (
        f"{path} already exists. Replace it (and its side-car "
        f"{corrections.sidecar_path(path).name})?"
    )


class ExportPanel(QGroupBox):
    """Export labels or reconstruction, each with its side-car.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose image, labels and session are exported.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Export")
        self.review = review
        #: Where the dialog opens: the folder of the last export, the home folder at first.
        self.last_folder = Path.home()
        #: Whether an export is being written.
        self.busy = False
        column = QVBoxLayout(self)
        row = QHBoxLayout()
        self.export_labels_button = QPushButton("Export labels…")
        self.export_labels_button.setToolTip(
            "NIfTI on the source CT's grid and affine, with a JSON side-car (model, edited and "
            "reviewed slices, volumes)"
        )
        self.export_labels_button.clicked.connect(lambda: self.export_labels())
        self.export_reconstruction_button = QPushButton("Export reconstruction…")
        self.export_reconstruction_button.setToolTip(
            "The restoration decoder's output of the DRS model that made the labels "
            "('<image> reconstruction [<model>]' layer)"
        )
        self.export_reconstruction_button.clicked.connect(lambda: self.export_reconstruction())
        row.addWidget(self.export_labels_button)
        row.addWidget(self.export_reconstruction_button)
        self.export_label = QLabel("")
        self.export_label.setWordWrap(True)
        column.addLayout(row)
        column.addWidget(self.export_label)

    # ------------------------------------------------------------------ dialogs

    def _ask_save_path(self, title: str, suggested: str, filters: str = NIFTI_FILTER) -> str | None:
        """File dialog for an export target (tests replace this method)."""
        path, _ = QFileDialog.getSaveFileName(
            self, title, suggested, filters, options=QFileDialog.Option.DontConfirmOverwrite
        )
        return path or None

    def _confirm_replace(self, path: Path) -> bool:
        """Ask before replacing an existing file (tests replace this method)."""
        answer = QMessageBox.question(self, "Replace file?", replace_question(path))
        return answer == QMessageBox.StandardButton.Yes

    def _export_target(
        self, path: str | os.PathLike[str] | None, title: str, kind: str
    ) -> Path | None:
        """The file to write: ``path``, or one chosen in a dialog (last export folder, else home).

        Exports are the user's files: proposing the folder of the source data would put them
        among the scanner's series (often read-only, or an archive).
        """
        image = self.review.image_layer
        source = str(image.metadata.get(SOURCE, "")) if image else ""
        seg = kind == "labels"
        if path is None:
            stem = corrections.image_stem(image.name if image else "ct")
            suggested = self.last_folder / f"{stem}_{kind}.nii.gz"
            filters = f"{NIFTI_FILTER};;{SEG_FILTER}" if seg else NIFTI_FILTER
            chosen = self._ask_save_path(title, str(suggested), filters)
            if not chosen:
                return None
            path = chosen
        target = Path(path)
        endings = (".nii", ".nii.gz", ".dcm") if seg else (".nii", ".nii.gz")
        if not target.name.lower().endswith(endings):
            target = target.with_name(target.name + ".nii.gz")
        if source and target.resolve() == Path(source).resolve():
            refuse(self.export_label, f"{target} is the source CT; choose another file name")
            return None
        if source and Path(source).resolve() in target.resolve().parents:
            refuse(
                self.export_label,
                f"{target} lies in the source CT's DICOM series folder {source} (the file would "
                "join the series); choose another folder",
            )
            return None
        if target.exists() and not self._confirm_replace(target):
            self.export_label.setText(f"not exported: {target.name} kept as it was")
            return None
        self.last_folder = target.parent
        return target

    # ------------------------------------------------------------------ exports

    def export_labels(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the labels as NIfTI on the source CT's grid and affine, plus a JSON side-car.

        Parameters
        ----------
        path
            Target file; ``None`` asks with a file dialog. An existing file is replaced only
            after the user agrees; the source CT is never overwritten.

        Returns
        -------
        Path or None
            The written NIfTI, or ``None`` when cancelled or refused.
        """
        review = self.review
        image, labels, session = review.image_layer, review.labels_layer, review.session
        if image is None or labels is None or session is None:
            refuse(self.export_label, "choose the image and its labels layer first")
            return None
        if not session.fits_image:
            refuse(
                self.export_label,
                f"the labels layer {labels.name!r} does not fit image {image.name!r}",
            )
            return None
        target = self._export_target(path, "Export labels", "labels")
        if target is None:
            return None
        review.refresh_status()
        # A copy: painting goes on while the file is written, and the file is this moment's.
        data, metadata, name = np.array(labels.data), dict(labels.metadata), labels.name
        written = self._write(lambda: export_layer_labels(target, data, metadata, name), "labels")
        if written is None:
            return None
        sidecar = corrections.sidecar_path(written)
        self.export_label.setText(f"labels written to {written}, side-car {sidecar.name}")
        show_info(f"Labels written to {written}")
        return written

    def reconstruction_layer(self) -> Image | None:
        """The reconstruction made by the model of the labels under review, if it made one.

        Results of different models never mix: the layer is found by the model's name
        (``"<image> reconstruction [<model>]"``), never another model's.
        """
        image, session = self.review.image_layer, self.review.session
        if image is None or session is None or session.model is None:
            return None
        name = layer_name(image.name, RECONSTRUCTION, session.model)
        for layer in self.review.viewer.layers:
            if isinstance(layer, Image) and layer.name == name:
                return layer
        return None

    def export_reconstruction(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the DRS restoration decoder's output on the source grid, plus a side-car.

        The side-car names the model that made the reconstruction (from the layer itself).
        """
        layer, session = self.reconstruction_layer(), self.review.session
        if layer is None or session is None:
            made_by = model_name(session.model) if session and session.model else "no model"
            refuse(
                self.export_label,
                f"no reconstruction of the labels' model ({made_by}): segment with a DRS model "
                "(drs_unet, kcmdrs_unet, dsmsc_unet) to get one",
            )
            return None
        target = self._export_target(path, "Export reconstruction", "reconstruction")
        if target is None:
            return None
        reference = reference_volume(self.review.image_layer)
        window = _hu_window(layer.metadata.get(MODEL) or {})
        if window is None:
            refuse(self.export_label, "the model that made this reconstruction is unknown, "
                   "so its HU window is too; segment again to export it")  # fmt: skip
            return None
        written = self._write(
            lambda: write_image(
                target, unit_to_hu(layer_to_volume(layer).array, window), reference
            ),
            "reconstruction",
            model=layer.metadata.get(MODEL),
        )
        if written is None:
            return None
        self.export_label.setText(f"reconstruction written to {written}")
        show_info(f"Reconstruction written to {written}")
        return written

    def _write(
        self, write: Callable[[], Path], kind: str, model: dict | None = None
    ) -> Path | None:
        """Write the NIfTI with ``write()``, then its side-car; on failure say why, keep no file.

        ``model`` is the model the side-car names when it is not the labels' (a reconstruction
        names its own).

        A full disk or a folder without write permission (``OSError``) is reported like bad
        input; NIfTI files go through :mod:`src_models.io.atomic`, so a failed write leaves no
        partial file, and labels whose side-car could not be written are removed again.
        """
        if self.busy:
            refuse(self.export_label, "an export is running: wait for it to finish")
            return None
        self.busy = True
        self.export_label.setText(f"writing the {kind}…")
        try:  # 1 to 5 s for a 512 x 512 x 200 CT: in a worker, the viewer stays usable
            written = run_responsive(write, description=f"Exporting the {kind}")
        except (VolumeError, ValueError, OSError) as error:
            refuse(self.export_label, str(error))
            return None
        finally:
            self.busy = False
        try:
            content = self.review.session.sidecar(written, kind, model=model)
            corrections.write_sidecar(written, content)
        except (ValueError, OSError) as error:
            written.unlink(missing_ok=True)
            refuse(self.export_label, f"{error}; the {kind} file was not kept")
            return None
        return written


def _hu_window(model: dict) -> tuple[float, float] | None:
    """The HU window of the model record of a result layer, from the record or its checkpoint."""
    if "hu_window" in model:
        return tuple(model["hu_window"])
    try:
        return tuple(read_metadata(model["checkpoint"])["preprocessing"]["hu_window"])
    except (KeyError, OSError, CheckpointError):
        return None

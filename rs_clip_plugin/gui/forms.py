"""Form rows shared by the classify dialog and the search dock: one way to build each kind of option row."""

from __future__ import annotations

from collections.abc import Sequence

from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout

# The precision rule (runtime.choose_precision) as the 'Precision' fields explain it.
PRECISION_TIP = ("auto: int8 on the CPU for encoders whose recorded agreement with fp32 allows it, fp16 on a GPU, "
                 "else fp32")


def check_and_spin(form: QFormLayout, label: str, text: str, check_name: str, spin_name: str,
                   bounds: tuple[float, float], value: float) -> tuple[QCheckBox, QDoubleSpinBox]:
    """A form row of an option switched on by a check box and sized by a number beside it."""
    check, spin = QCheckBox(text), QDoubleSpinBox()
    check.setObjectName(check_name)
    spin.setObjectName(spin_name)
    spin.setRange(*bounds)
    spin.setValue(value)
    # The number only counts with its box ticked: greyed out otherwise, so nobody types a value that is ignored.
    spin.setEnabled(check.isChecked())
    check.toggled.connect(spin.setEnabled)
    row = QHBoxLayout()
    row.addWidget(check)
    row.addWidget(spin)
    row.addStretch(1)
    form.addRow(label, row)
    return check, spin


def choice_row(form: QFormLayout, label: str, name: str, items: Sequence[str], tip: str) -> QComboBox:
    """A form row with a drop-down of fixed choices (the engine's words, e.g. auto/dense/tile)."""
    combo = QComboBox()
    combo.setObjectName(name)
    combo.addItems(list(items))
    combo.setToolTip(tip)
    form.addRow(label, combo)
    return combo

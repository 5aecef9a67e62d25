"""SDMX messages written by pysdmx: structure messages of stored versions and data messages of cells.

pysdmx 1.21 writes SDMX-ML 2.1 structure messages, SDMX-ML 2.1 generic and structure-specific data (and
their time-series flavours), SDMX-CSV 1.0 and 2.0 data. It writes no SDMX-JSON *data* message (only
SDMX-JSON 2.x structures and metadata, which belong to the SDMX 3.0 API) and no SDMX-ML error message
(its error writer is an empty stub): the error message, the one thing it cannot write, is built here
element by element with ElementTree as SDMX-ML 2.1 ``mes:Error`` (pysdmx's error reader reads it back).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd
from pysdmx.io.csv.sdmx10.writer import write as write_csv10
from pysdmx.io.csv.sdmx20.writer import write as write_csv20
from pysdmx.io.pd import PandasDataset
from pysdmx.io.xml.sdmx21.writer.generic import write as write_generic
from pysdmx.io.xml.sdmx21.writer.generic_ts import write as write_generic_ts
from pysdmx.io.xml.sdmx21.writer.structure import write as write_structure
from pysdmx.io.xml.sdmx21.writer.structure_specific import write as write_ss
from pysdmx.io.xml.sdmx21.writer.structure_specific_ts import write as write_ss_ts
from pysdmx.model import Organisation, Schema
from pysdmx.model.message import Header

from api.sdmx import structures as st
from api.sdmx.query import DataFormat
from api.sdmx.store import Snapshot

ERROR_TYPE: Final = "application/vnd.sdmx.error+xml;version=2.1"
_MES: Final = "http://www.sdmx.org/resources/sdmxml/schemas/v2_1/message"
_COM: Final = "http://www.sdmx.org/resources/sdmxml/schemas/v2_1/common"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def structure_message(
    snapshot: Snapshot, items: Sequence[st.Stored], stubs: Iterable[tuple[Any, ...]]
) -> str:
    """The SDMX-ML 2.1 structure message of ``items`` (those keyed in ``stubs`` as stubs), cached.

    The header's id and time derive from the versions, so a message is the same bytes every time.
    """
    stub_keys = frozenset(stubs)
    key = ("structure", tuple(s.key for s in items), stub_keys)
    cached = snapshot.rendered.get(key)
    if cached is not None:
        return cached
    objects: list[Any] = []
    for s in items:
        stub = s.key in stub_keys
        if s.kind == "dataflow":
            objects.append(st.dataflow(s, stub))
        elif s.kind == "datastructure":
            objects.append(st.data_structure(s, snapshot.versions, stub))
        else:
            objects.append(st.item_scheme(s, stub))
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
    prepared = max((s.created_at for s in items if s.created_at is not None), default=_EPOCH)
    agency = items[0].agency
    header = Header(id=f"STR_{digest}", prepared=prepared, sender=Organisation(id=agency))
    text = write_structure(objects, prettyprint=False, header=header)
    assert text is not None  # noqa: S101 - no output path: pysdmx returns the text
    snapshot.rendered[key] = text
    return text


def data_message(
    schema: Schema,
    frame: pd.DataFrame,
    fmt: DataFormat,
    dimension_at_observation: str,
    agency: str,
    header_of: tuple[str, datetime] | None = None,
) -> str:
    """The data message of ``frame`` (columns as the DSD's components) in ``fmt``.

    ``header_of`` = (message ID, prepared time) makes the SDMX-ML header deterministic (a release's
    messages); otherwise pysdmx gives each message a new ID and the current time.
    """
    dataset = PandasDataset(structure=schema, data=frame)
    text: str | None
    if fmt is DataFormat.CSV_1:
        text = write_csv10([dataset])
    elif fmt is DataFormat.CSV_2:
        text = write_csv20([dataset])
    else:
        header = (
            Header(sender=Organisation(id=agency))
            if header_of is None
            else Header(id=header_of[0], prepared=header_of[1], sender=Organisation(id=agency))
        )
        writer = {
            DataFormat.GENERIC: write_generic,
            DataFormat.GENERIC_TS: write_generic_ts,
            DataFormat.STRUCTURE_SPECIFIC: write_ss,
            DataFormat.STRUCTURE_SPECIFIC_TS: write_ss_ts,
        }[fmt]
        if fmt in (DataFormat.GENERIC_TS, DataFormat.STRUCTURE_SPECIFIC_TS):
            text = writer([dataset], prettyprint=False, header=header)
        else:
            text = writer(
                [dataset], prettyprint=False, header=header, dimension_at_observation=dimension_at_observation
            )
    assert text is not None  # noqa: S101 - no output path: pysdmx returns the text
    return text


def error_message(code: int, text: str) -> str:
    """An SDMX-ML 2.1 error message (``mes:Error``) with an SDMX error ``code`` (100 no results, ...)."""
    ET.register_namespace("mes", _MES)
    ET.register_namespace("com", _COM)
    root = ET.Element(f"{{{_MES}}}Error")
    message = ET.SubElement(root, f"{{{_MES}}}ErrorMessage", {"code": str(code)})
    node = ET.SubElement(message, f"{{{_COM}}}Text", {"{http://www.w3.org/XML/1998/namespace}lang": "en"})
    node.text = text
    return ET.tostring(root, encoding="unicode", xml_declaration=True)

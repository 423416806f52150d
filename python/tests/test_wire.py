"""What the client puts on the wire, without a worker."""

from __future__ import annotations

import base64
import binascii
import json
import struct

import pytest

from tenantvec.client import decode_vector_base64, document_batches, encode_vector_base64, wire_document


def test_a_vector_is_base64_of_little_endian_f32() -> None:
    text = encode_vector_base64([1.0, -2.5, 0.1])
    assert base64.b64decode(text) == struct.pack("<3f", 1.0, -2.5, 0.1)
    assert decode_vector_base64(text) == pytest.approx([1.0, -2.5, 0.1], rel=1e-7)


def test_numpy_vectors_encode_as_lists_do() -> None:
    np = pytest.importorskip("numpy")
    floats = [0.25, -0.5, 3.0]
    assert encode_vector_base64(np.array(floats, dtype=np.float64)) == encode_vector_base64(floats)
    assert encode_vector_base64(np.array(floats, dtype=np.float32)) == encode_vector_base64(floats)


def test_text_that_is_not_base64_is_refused() -> None:
    with pytest.raises(binascii.Error):
        decode_vector_base64("not base64!")


def test_a_document_carries_its_vector_as_base64() -> None:
    doc = {"tenant": "alice", "doc_id": "a1", "text": "walk", "vector": [1.0, 0.0], "metadata": None}
    wire = wire_document(doc)
    assert wire == {"doc_id": "a1", "text": "walk", "vector": encode_vector_base64([1.0, 0.0])}
    # A string is sent as it is: the caller's base64 (e.g. from OpenAI).
    assert wire_document({"doc_id": "a2", "vector": "AACAPw=="})["vector"] == "AACAPw=="


def test_batches_hold_base64_documents() -> None:
    docs = [{"doc_id": f"d{i}", "vector": [float(i)] * 384} for i in range(3)]
    [(n, body)] = list(document_batches(docs))
    assert n == 3
    sent = json.loads(body)["documents"]
    assert [decode_vector_base64(d["vector"])[0] for d in sent] == [0.0, 1.0, 2.0]
    # About 2 KB a 384-float vector, against ~7.6 KB as JSON floats.
    assert len(body) < 3 * 2200

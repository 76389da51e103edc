"""Tests for torro.material: key material that never shows its bytes."""

import copy
import hashlib
import pickle
from collections.abc import Callable

import pytest

from torro.material import KeyMaterial, fingerprint

DATA = bytes.fromhex(
    "8f3e2a61c4b7d9051e6f7a2b3c4d5e6f"
    "0123456789abcdeffedcba9876543210"
)
HEX = DATA.hex()
FINGERPRINT = hashlib.sha256(DATA).hexdigest()[:16]


def test_fingerprint_is_the_sha256_prefix_of_the_key_bytes() -> None:
    material = KeyMaterial(DATA)

    assert material.fingerprint == FINGERPRINT
    assert fingerprint(DATA) == FINGERPRINT
    assert fingerprint(b"abc") == "ba7816bf8f01cfea"
    assert len(FINGERPRINT) == 16
    assert FINGERPRINT not in HEX


def test_repr_shows_length_and_fingerprint_only() -> None:
    material = KeyMaterial(DATA)
    expected = f"<KeyMaterial 32 bytes fingerprint={FINGERPRINT}>"

    assert repr(material) == expected
    assert str(material) == expected


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        format,
        lambda m: f"{m}",
        lambda m: f"{m!r}",
        lambda m: f"{m:>80}",
        lambda m: "%s" % m,
        lambda m: "%r" % (m,),
        lambda m: "{}".format(m),
        lambda m: str([m]),
        lambda m: str({"key": m}),
    ],
)
def test_no_rendering_shows_the_key(
    render: Callable[[KeyMaterial], str],
) -> None:
    text = render(KeyMaterial(DATA))

    assert HEX not in text
    assert HEX.upper() not in text
    assert str(DATA) not in text
    assert FINGERPRINT in text


def test_reveal_gives_the_bytes_and_the_hex() -> None:
    material = KeyMaterial(DATA)

    assert material.reveal() == DATA
    assert material.reveal_hex() == HEX
    assert len(material) == 32


def test_from_hex_round_trips() -> None:
    material = KeyMaterial.from_hex(HEX)

    assert material.reveal() == DATA


@pytest.mark.parametrize(
    "text",
    [
        HEX.upper(),
        HEX[:-1],
        HEX[:-2] + "0g",
        "0x" + HEX,
        HEX + "\n",
        " " + HEX,
        HEX[:30] + " " + HEX[30:],
        HEX[:-2] + "\u0663\u0663",
        "",
    ],
)
def test_from_hex_is_strict_and_does_not_echo(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        KeyMaterial.from_hex(text)

    message = str(caught.value)
    assert HEX not in message
    assert (not text) or text.strip() not in message


def test_from_hex_messages() -> None:
    with pytest.raises(ValueError) as odd:
        KeyMaterial.from_hex("abc")
    with pytest.raises(ValueError) as upper:
        KeyMaterial.from_hex("ABCD")

    assert str(odd.value) == "key hex must have an even length, not 3"
    assert str(upper.value) == (
        "key hex must hold only lowercase hex digits 0-9a-f"
    )


def test_from_hex_refuses_bytes() -> None:
    with pytest.raises(TypeError):
        KeyMaterial.from_hex(HEX.encode())  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [bytearray(DATA), HEX, memoryview(DATA)])
def test_only_bytes_are_key_material(data: object) -> None:
    with pytest.raises(TypeError) as caught:
        KeyMaterial(data)  # type: ignore[arg-type]

    assert HEX not in str(caught.value)


def test_empty_key_material_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        KeyMaterial(b"")


def test_equality_compares_the_bytes() -> None:
    material = KeyMaterial(DATA)
    flipped = DATA[:-1] + bytes([DATA[-1] ^ 1])

    assert material == KeyMaterial(bytes(DATA))
    assert material != KeyMaterial(flipped)
    assert material != KeyMaterial(DATA[:16])
    assert material != DATA
    assert material.__eq__(DATA) is NotImplemented


def test_hash_follows_equality() -> None:
    material = KeyMaterial(DATA)

    assert hash(material) == hash(KeyMaterial(bytes(DATA)))
    assert hash(material) == hash(FINGERPRINT)
    assert len({material, KeyMaterial(bytes(DATA))}) == 1


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KeyMaterial(DATA), protocol=protocol)


def test_copies_share_the_immutable_instance() -> None:
    material = KeyMaterial(DATA)

    assert copy.copy(material) is material
    assert copy.deepcopy({"key": material})["key"] is material


def test_no_instance_dict() -> None:
    material = KeyMaterial(DATA)

    assert not hasattr(material, "__dict__")
    with pytest.raises(AttributeError):
        material.extra = 1  # type: ignore[attr-defined]

"""Loading refuses bad files and bad arguments with one clear error, and never needs more than the .onnx file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rnnx.export.graph import build_step_graph
from rnnx.runtime import Model, ModelFileError, RnnxError, UsageError, contract
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig


@pytest.fixture(scope="module")
def proto() -> onnx.ModelProto:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("abcdefgh ")
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=4, hidden=8, layers=2)).eval()
    return build_step_graph(model, tokenizer, 17)


def save(proto: onnx.ModelProto, path: Path, **meta_changes: str | None) -> Path:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    meta = {p.key: p.value for p in copy.metadata_props}
    for key, value in meta_changes.items():
        key = key.replace("__", ".")
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del copy.metadata_props[:]
    onnx.helper.set_model_props(copy, meta)
    path.write_bytes(copy.SerializeToString())
    return path


def test_a_good_file_loads_and_describes_itself(proto: onnx.ModelProto, tmp_path: Path) -> None:
    model = Model(save(proto, tmp_path / "m.onnx"), provider="cpu")
    assert (model.info.cell, model.info.layers, model.info.hidden, model.info.vocab_size) == ("lstm", 2, 8, 10)
    assert model.device == "cpu" and "lstm 2x8" in repr(model)


@pytest.mark.parametrize(
    "content",
    [b"hello, not a model\n", b"\x08\x07" + b"\xff" * 40, b""],
    ids=["text", "garbage", "empty"],
)
def test_file_that_is_not_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not an ONNX model|could not be loaded"):
        Model(path, provider="cpu")


def test_truncated_file(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(proto.SerializeToString()[:500])
    with pytest.raises(ModelFileError, match="cut.onnx"):
        Model(path, provider="cpu")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        Model(tmp_path / "none.onnx")
    with pytest.raises(ModelFileError, match="not a file"):
        Model(tmp_path)


def test_onnx_without_rnnx_metadata(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "bare.onnx", **{k.replace(".", "__"): None for k in contract.META_KEYS})
    with pytest.raises(ModelFileError, match="no rnnx metadata"):
        Model(path, provider="cpu")


def test_newer_format_version(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "new.onnx", rnnx__format_version=str(contract.FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="newer"):
        Model(path, provider="cpu")


def test_external_data_is_refused(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path, copy = tmp_path / "ext.onnx", onnx.ModelProto()
    copy.CopyFrom(proto)  # save_model moves the tensors of the proto it is given out to the data file
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin")
    assert (tmp_path / "w.bin").exists()
    with pytest.raises(ModelFileError, match="external data"):
        Model(path, provider="cpu")


def test_inputs_that_do_not_match_the_contract(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "gru.onnx", rnnx__cell="gru")  # a GRU takes no c: the LSTM graph's c is extra
    with pytest.raises(ModelFileError, match="does not match the rnnx contract"):
        Model(path, provider="cpu")


def test_shapes_that_disagree_with_the_metadata(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "deep.onnx", rnnx__layers="3")
    with pytest.raises(ModelFileError, match="disagrees with its metadata"):
        Model(path, provider="cpu")


def test_vocabulary_that_disagrees_with_the_metadata(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "vocab.onnx", rnnx__vocab_size="11")
    with pytest.raises(ModelFileError, match="vocabulary"):
        Model(path, provider="cpu")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"provider": "tpu"}, "provider"),
        ({"threads": -1}, "threads"),
        ({"provider": "cpu", "cuda_graph": True}, "CUDA graphs"),
    ],
)
def test_bad_arguments_are_usage_errors(proto: onnx.ModelProto, tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        Model(save(proto, tmp_path / "m.onnx"), **kwargs)


def test_explicit_cuda_without_a_gpu_is_one_clear_error(proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = save(proto, tmp_path / "m.onnx")
    if Model(path, provider="auto").device == "cuda":
        pytest.skip("a GPU is present here: this checks the machine without one")
    with pytest.raises(RnnxError, match="CUDA provider was asked for"):
        Model(path, provider="cuda")


# -- issue 9: a model file is untrusted input ---------------------------------------------------------------------


def edit(proto: onnx.ModelProto, path: Path, change) -> Path:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    change(copy.graph)
    path.write_bytes(copy.SerializeToString())
    return path


def test_outputs_are_checked_like_inputs(proto: onnx.ModelProto, tmp_path: Path) -> None:
    def narrow_logits(graph: onnx.GraphProto) -> None:
        graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5  # vocabulary 10 in the metadata

    def double_logits(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            node.output[:] = ["logits_f" if o == contract.LOGITS else o for o in node.output]
        graph.node.append(onnx.helper.make_node("Cast", ["logits_f"], [contract.LOGITS], to=onnx.TensorProto.DOUBLE))
        graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE

    def extra_output(graph: onnx.GraphProto) -> None:
        graph.output.append(onnx.helper.make_tensor_value_info("x_embed", onnx.TensorProto.FLOAT, None))

    def symbolic_state(graph: onnx.GraphProto) -> None:
        for value in (*graph.input[1:], *graph.output[1:]):
            for dim, name in zip(value.type.tensor_type.shape.dim, ("L", "batch", "H")):
                dim.dim_param = name

    cases = {
        narrow_logits: "logits has shape",
        double_logits: "logits is tensor\\(double\\)",
        extra_output: "does not match the rnnx contract",
        symbolic_state: "h has shape",
    }
    for change, words in cases.items():
        with pytest.raises(ModelFileError, match=words):
            Model(edit(proto, tmp_path / f"{change.__name__}.onnx", change), provider="cpu")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("rnnx.hidden", "100000000000", "more than its"),
        ("rnnx.layers", "1" + "0" * 30, "malformed"),
        ("rnnx.layers", "1000000", "more than its"),
        ("rnnx.hidden", "32.0", "malformed"),
        ("rnnx.hidden", "-8", "malformed"),
        ("rnnx.format_version", "0", "format_version"),
        ("rnnx.tokenizer", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        # Python's own message said to raise sys.set_int_max_str_digits: no advice for a broken file
        ("rnnx.tokenizer", '{"kind": "char", "unk_id": ' + "1" * 5000 + "}", "a number of 5,000 digits\\): re-export"),
        ("rnnx.generation", '{"top_k": ' + "9" * 30 + "}", "a number of 30 digits"),
    ],
)
def test_sizes_the_file_cannot_hold_are_refused(
    proto: onnx.ModelProto, tmp_path: Path, key: str, value: str, words: str
) -> None:
    path = save(proto, tmp_path / "lie.onnx", **{key.replace(".", "__"): value})
    with pytest.raises(ModelFileError, match=words):
        Model(path, provider="cpu")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path, proto: onnx.ModelProto) -> None:
    path = tmp_path / "huge.onnx"
    with path.open("wb") as f:
        f.truncate(40 * 2**30)  # sparse: 40 GB that take no disk
    with pytest.raises(ModelFileError, match="more than a self-contained ONNX file"):
        Model(path, provider="cpu")
    small = save(proto, tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="raise max_bytes"):
        Model(small, provider="cpu", max_bytes=1000)


def test_a_graph_that_fails_while_running_is_one_error(tmp_path: Path) -> None:
    """A file that loads but whose graph fails at run time (here: a Reshape that cannot fit) is a
    ModelFileError naming the file, from the step path and from the prompt path alike."""
    from rnnx.export.graph import build_model_graph

    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("abcdefgh ")
    model = RNNLM(ModelConfig(cell="gru", vocab_size=len(tokenizer.vocab), embed=4, hidden=8)).eval()
    for broken in (contract.LOGITS, contract.PROMPT_LOGITS):
        proto = build_model_graph(model, tokenizer, 17, "matmul")
        graph = proto.graph
        for node in graph.node:
            node.output[:] = [f"{broken}_pre" if o == broken else o for o in node.output]
        shapes = [("odd", [7, -1]), ("back", [-1, len(tokenizer.vocab)])]
        graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v, np.int64), n) for n, v in shapes)
        graph.node.append(onnx.helper.make_node("Reshape", [f"{broken}_pre", "odd"], [f"{broken}_odd"]))
        graph.node.append(onnx.helper.make_node("Reshape", [f"{broken}_odd", "back"], [broken]))
        path = tmp_path / f"{broken}.onnx"
        path.write_bytes(proto.SerializeToString())
        loaded = Model(path, provider="cpu")
        with pytest.raises(ModelFileError, match="failed while running .*re-export it"):
            loaded.generate("abc", 5)


def test_shapes_that_are_not_utf8_are_one_error(proto: onnx.ModelProto, tmp_path: Path) -> None:
    """A dimension name onnxruntime cannot decode (a flipped bit did this) raised UnicodeDecodeError."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output[1].type.tensor_type.shape.dim[1].dim_param = "QZQZQ"
    data = copy.SerializeToString()
    assert data.count(b"QZQZQ") == 1
    path = tmp_path / "bytes.onnx"
    path.write_bytes(data.replace(b"QZQZQ", b"\xe1ZQZQ"))
    with pytest.raises(ModelFileError, match="bytes.onnx is corrupt .*not text"):
        Model(path, provider="cpu")

"""qonnx's inference_cost on qsp's QONNX export next to qsp's own counts (qsp.estimate), for
the test models (MLP, CNN with activation masks, the DAG with every op). Writes
benchmarks/results/qonnx_cost.json; docs/qonnx.md explains every difference.

    python -m benchmarks.qonnx_cost
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from qonnx.util.inference_cost import inference_cost

    from qsp.estimate.core import estimate
    from qsp.estimate.counts import count_graph
    from qsp.export.qonnx import build_qonnx, qonnx_wrapper
    from tests.bundles import build_bundle
    from tests.graphs_dag import dag_bundle

    plan = dict(steps=20, weight_bits=6, act_bits=6, weight_sparsity=0.5)
    models = {"mlp (no activation masks)": build_bundle("mlp", act_sparsity=0.0, **plan),
              "mlp (50 % activation masks)": build_bundle("mlp", act_sparsity=0.5, **plan),
              "cnn (50 % activation masks, padding 1)": build_bundle("cnn", act_sparsity=0.5, **plan),
              "dag (tests/graphs_dag.py)": dag_bundle()[0]}
    out = {}
    for name, b in models.items():
        w = qonnx_wrapper(build_qonnx(b), cleanup=False)
        dense = inference_cost(w, discount_sparsity=False, cost_breakdown=True)
        sparse = inference_cost(copy.deepcopy(w), discount_sparsity=True)["total_cost"]
        t = estimate(b, None).totals
        out[name] = {
            "qonnx": {"macs_dense": dense["total_cost"]["total_macs"], "bops_dense": dense["total_cost"]["total_bops"],
                      "weight_bits_dense": dense["total_cost"]["total_mem_w_bits"],
                      "weights": dense["total_cost"]["total_mem_w_elems"], "macs": sparse["total_macs"],
                      "bops": sparse["total_bops"], "nonzero_weights": sparse["total_mem_w_elems"],
                      "not_costed_ops": dense["total_cost"].get("unsupported", "set()")},
            "qsp": {"macs_dense": t.macs_dense, "bops_dense": t.bops_dense, "weight_bits_dense": t.weight_bits_dense,
                    "weights": t.weights, "macs": t.macs, "bops": t.bops, "nonzero_weights": t.nonzeros},
            "qsp_layers": [{"node": n.name, "op": n.op, "macs_dense": n.weight.macs_dense, "weights": n.weight.weights,
                            "weight_bits": n.weight.weight_bits, "input_bits": n.weight.in_format.bits}
                           for n in count_graph(b).weight_nodes()],
            "qonnx_nodes": {k: {"macs": v["total_macs"], "bops": v["total_bops"]}
                            for k, v in dense["node_cost"].items() if v["total_macs"]},
        }
    dst = ROOT / "benchmarks" / "results" / "qonnx_cost.json"
    dst.write_text(json.dumps({"command": "python -m benchmarks.qonnx_cost", "models": out}, indent=1))
    print(json.dumps({k: {s: v[s] for s in ("qonnx", "qsp")} for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()

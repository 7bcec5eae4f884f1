"""Per-kernel times of one torch.compile'd CPU training step of a converted network (inductor's
kernel profile), behind the CPU 'compiled' figures of benchmarks/results/overhead/README.md.

    python benchmarks/overhead_inductor_kernels.py [qsparse_mnist|resnet8] > benchmarks/results/overhead/cpu_compiled_kernels.txt
"""
import sys
import time

import torch
import torch._dynamo as dynamo
import torch._inductor.config as inductor_config
from torch import nn
from torch.profiler import profile

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import overhead as oh  # noqa: E402

torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else "qsparse_mnist"
factory, shape = oh.NETWORKS[name]
torch.manual_seed(0)
m = oh.wrap(factory())
m.train()
x, y = torch.rand((128,) + shape), torch.randint(0, 10, (128,))
for _ in range(3):
    nn.functional.cross_entropy(m(x), y).backward()
oh.check_active(m)
e = dynamo.explain(m)(x)
print(f"command: python {' '.join(sys.argv)}\n{name}: graphs {e.graph_count}, graph breaks {e.graph_break_count}")
inductor_config.cpp.enable_kernel_profile = True
cm = torch.compile(m)
opt = torch.optim.SGD(m.parameters(), lr=0.01)


def step():
    loss = nn.functional.cross_entropy(cm(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(3):
    step()
ts = []
for _ in range(5):
    t = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t)
print("compiled qsp step ms:", [round(v * 1e3, 1) for v in ts])
with profile() as p:
    step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=110))

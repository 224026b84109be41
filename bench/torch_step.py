"""The PyTorch reference: the same ResNet-32 (LDAM-DRW's resnet32, option-A
shortcuts), batch and SGD as ltjax, float32, on the CPU.

  python bench/torch_step.py --batch 128 [--compile]

Times forward + backward + SGD update on a fixed batch (the data loader is not
timed), and the evaluation forward. Prints one JSON line.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.pad = cout - cin
    self.stride = stride

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    short = x
    if self.stride != 1 or self.pad:
      short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(out + short)


class ResNetCifar(nn.Module):
  def __init__(self, depth=32, width=16, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    layers, cin = [], width
    for stage in range(3):
      for b in range(n):
        cout = width * 2 ** stage
        layers.append(BasicBlock(cin, cout, 2 if stage and b == 0 else 1))
        cin = cout
    self.layers = nn.Sequential(*layers)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)

  def forward(self, x):
    x = self.layers(F.relu(self.bn1(self.conv1(x))))
    return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--depth', type=int, default=32)
  ap.add_argument('--runs', type=int, default=5)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--compile', action='store_true')
  ap.add_argument('--threads', type=int, default=0, help='0: torch default')
  ap.add_argument('--device', default='cpu')
  ap.add_argument('--bf16', action='store_true', help='autocast to bfloat16')
  args = ap.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  dev = torch.device(args.device)
  sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
  model = ResNetCifar(args.depth).to(dev)
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
  x = torch.randn(args.batch, 3, 32, 32, device=dev)
  y = torch.randint(0, 10, (args.batch,), device=dev)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
      loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss

  fn = torch.compile(step) if args.compile else step
  t = time.perf_counter()
  model.train()
  for _ in range(3):
    loss = fn()
  sync()
  warm_s = time.perf_counter() - t
  rates = []
  for _ in range(args.runs):
    t = time.perf_counter()
    for _ in range(args.steps):
      loss = fn()
    sync()
    rates.append(args.steps * args.batch / (time.perf_counter() - t))
  model.eval()
  xe = torch.randn(512, 3, 32, 32, device=dev)
  eval_rates = []
  with torch.no_grad():
    model(xe)
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(4):
        model(xe)
      sync()
      eval_rates.append(4 * 512 / (time.perf_counter() - t))
  print(json.dumps({'framework': 'pytorch' + ('-compile' if args.compile else ''), 'device': args.device, 'bf16': args.bf16,
                    'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'params': params, 'batch': args.batch, 'depth': args.depth,
                    'warmup_s': round(warm_s, 2),
                    'train_img_s': round(statistics.median(rates), 1),
                    'train_min': round(min(rates), 1), 'train_max': round(max(rates), 1),
                    'eval_img_s': round(statistics.median(eval_rates), 1),
                    'final_loss': float(loss)}))


if __name__ == '__main__':
  main()

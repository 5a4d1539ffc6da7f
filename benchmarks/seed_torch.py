"""REFERENCE ONLY: the lecture's whole PyTorch script, as a process to time.

``python benchmarks/seed_torch.py`` generates the lecture's data with torch's
RNG, trains 3 epochs (lr 0.03, batch 32, scratch iterator with
``random.shuffle``) and prints the error in estimating w and b, as the seed's
notebook does. The benchmark times it end to end beside ``jaxlin train``.
"""

import random

import torch
from torch_reference import LinearRegressionScratch, SyntheticRegressionData, fit

torch.manual_seed(0)
random.seed(0)
w, b, num_train, num_val = torch.tensor([2, -3.4]), 4.2, 1000, 1000
n = num_train + num_val
X = torch.randn(n, len(w))
y = torch.matmul(X, w.reshape((-1, 1))) + b + torch.randn(n, 1) * 0.01
orders = []
for _ in range(3):
    indices = list(range(num_train))
    random.shuffle(indices)
    orders.append(indices)
data = SyntheticRegressionData(X, y, num_train, num_val, 32, orders)
model = LinearRegressionScratch(torch.normal(0, 0.01, (2, 1)), torch.zeros(1), lr=0.03)
fit(model, data, max_epochs=3)
with torch.no_grad():
    print(f"error in estimating w: {w - model.w.reshape(w.shape)}")
    print(f"error in estimating b: {b - model.b}")

"""REFERENCE ONLY: the lecture's PyTorch pipeline, re-implemented faithfully.

This is the seed's code (d2l 3.2-3.4) without the d2l package: the from-scratch
``get_dataloader`` (and the framework ``DataLoader`` variant), the
``LinearRegressionScratch`` model with its loss, the hand-written ``SGD`` with
``step``/``zero_grad``, and ``Trainer.fit_epoch`` with a validation pass each
epoch. One change, so that every implementation sees the same batches: where the
seed calls ``random.shuffle(indices)``, the epoch's order is passed in
(``orders[epoch]``, made by ``jaxlin.shuffle.permutation``). It is used by the
benchmarks as the baseline and is not part of jaxlin.
"""

from __future__ import annotations

import torch


class SyntheticRegressionData:
    """The seed's data module, holding given tensors instead of drawing them."""

    def __init__(self, X, y, num_train, num_val, batch_size=32, orders=None):
        self.X, self.y = X, y
        self.num_train, self.num_val, self.batch_size = num_train, num_val, batch_size
        self.orders, self.epoch = orders, 0

    def get_dataloader(self, train):
        """The from-scratch iterator of the lecture."""
        if train:
            indices = list(self.orders[self.epoch])  # the seed: random.shuffle(indices)
        else:
            indices = list(range(self.num_train, self.num_train + self.num_val))
        for i in range(0, len(indices), self.batch_size):
            batch_indices = torch.tensor(indices[i : i + self.batch_size])
            yield self.X[batch_indices], self.y[batch_indices]

    def get_tensorloader(self, train):
        """The framework ``DataLoader`` variant (``shuffle=train`` via a fixed order)."""
        i = slice(0, self.num_train) if train else slice(self.num_train, None)
        dataset = torch.utils.data.TensorDataset(self.X[i], self.y[i])
        sampler = list(self.orders[self.epoch]) if train else None
        return torch.utils.data.DataLoader(dataset, self.batch_size, sampler=sampler)


class LinearRegressionScratch:
    """The lecture's model: parameters with ``requires_grad``, forward, loss."""

    def __init__(self, w0, b0, lr):
        self.w = w0.clone().reshape(-1, 1).requires_grad_(True)
        self.b = b0.clone().reshape(1).requires_grad_(True)
        self.lr = lr

    def forward(self, X):
        return torch.matmul(X, self.w) + self.b

    def loss(self, y_hat, y):
        l = (y_hat - y) ** 2 / 2  # noqa: E741 (the lecture's name)
        return l.mean()

    def training_step(self, batch):
        return self.loss(self.forward(batch[0]), batch[1])

    def validation_step(self, batch):
        return self.loss(self.forward(batch[0]), batch[1])


class SGD:
    """The lecture's hand-written minibatch SGD."""

    def __init__(self, params, lr):
        self.params, self.lr = params, lr

    def step(self):
        for param in self.params:
            param -= self.lr * param.grad

    def zero_grad(self):
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


def fit(model, data, max_epochs, framework_loader=False):
    """``Trainer.fit``: per epoch, the training loop then a validation pass."""
    optim = SGD([model.w, model.b], model.lr)
    loader = data.get_tensorloader if framework_loader else data.get_dataloader
    for epoch in range(max_epochs):
        data.epoch = epoch
        for batch in loader(train=True):
            loss = model.training_step(batch)
            optim.zero_grad()
            with torch.no_grad():
                loss.backward()
                optim.step()
        for batch in loader(train=False):
            with torch.no_grad():
                model.validation_step(batch)
    return model


def train(
    X, y, w0, b0, orders, *, num_train, num_val, lr, batch_size, max_epochs, loader="scratch"
):
    """Run the lecture's pipeline on numpy inputs; returns ``(w, b)`` as numpy."""
    data = SyntheticRegressionData(
        torch.as_tensor(X), torch.as_tensor(y), num_train, num_val, batch_size, orders
    )
    model = LinearRegressionScratch(torch.as_tensor(w0), torch.as_tensor(b0), lr)
    fit(model, data, max_epochs, framework_loader=loader == "dataloader")
    return model.w.detach().numpy().ravel(), model.b.detach().numpy()

"""What the torch examples measure: test accuracy, and a digest of
parameter values that is equal in two processes exactly when the values
are bit-identical."""

import hashlib


def accuracy(model, images, labels):
    """The fraction of ``images`` that ``model`` labels right."""
    import torch
    with torch.no_grad():
        correct = sum((model(images[i:i + 1000]).argmax(1) ==
                       labels[i:i + 1000]).sum().item()
                      for i in range(0, len(images), 1000))
    return correct / len(images)


def digest(tensors):
    """sha256 of a dict of tensors (name -> tensor), in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().numpy().tobytes())
    return h.hexdigest()

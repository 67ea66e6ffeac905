"""Pretrained teachers in torchvision's format (docs/methods.md §3): loaded from a local file, fed ImageNet-normalised
inputs, checked against the class order, and evaluated on the cached val split exactly as torchvision's own eval
transform would (the mechanism behind README's 69.76 check, with a small ResNet-18 checkpoint trained here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imagetrees import dataset, make_tree, wnids
from torch.nn import functional as F
from torchvision import datasets, transforms
from torchvision.models import resnet18

from workers import stages
from workers.artifacts import ArtifactStore
from workers.config import Named, TeacherConfig
from workers.data import DataError, imagefolder, load_splits
from workers.graph import teacher_key
from workers.teacher import IMAGENET_MEAN, IMAGENET_STD, Renormalize, check_teacher, load_teacher, normalization

pytestmark = pytest.mark.slow

RESIZE, CROP = 73, 64  # ImageNet's 256 / 224, scaled to 64 px


def tv_eval(folder, files=None):
    """(images, labels) through torchvision's own eval pipeline: Resize, CenterCrop, ToTensor, Normalize."""
    tf = transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=tf)
    if files is not None:
        keep = {str(folder / f) for f in files}
        ds.samples = [s for s in ds.samples if s[0] in keep]
    x = torch.stack([ds[i][0] for i in range(len(ds.samples))])
    return x, torch.tensor([s[1] for s in ds.samples])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The 10-class tree of 500x375 JPEGs and a torchvision ResNet-18 trained on it by torchvision code."""
    tmp = tmp_path_factory.mktemp("pretrained")
    root = make_tree(tmp / "data", classes=wnids(10), per_class=8, val=4, size=(500, 375), ext=".JPEG", seed=3)
    x, y = tv_eval(root / "train")
    torch.manual_seed(0)
    net = resnet18(num_classes=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        idx = torch.randperm(len(y))[:32]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in net.modules():  # BatchNorm statistics of the whole train split (cumulative), then eval mode
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(x)
    net.eval()
    weights = tmp / "resnet18-tiny.pth"
    torch.save(net.state_dict(), weights)  # torchvision's format: resnet18's own state_dict keys
    return root, weights, net


def tcfg(weights, **kw) -> TeacherConfig:
    from workers.artifacts import sha256_file

    return TeacherConfig(
        arch=Named.make("resnet18", {"small_input_stem": "auto"}),
        weights=str(weights),
        weights_sha256=sha256_file(weights),
        **kw,
    )


def test_the_val_check_reproduces_torchvisions_eval_transform(tree, tmp_path):
    root, weights, net = tree
    ds = dataset(root, image_size=CROP, val_resize=RESIZE, val_crop=CROP, minival_per_class=2)
    got = check_teacher(ds.to_json(), tcfg(weights).to_json(), ArtifactStore(tmp_path / "store"), device="cpu")
    x, y = tv_eval(root / "val")
    with torch.no_grad():
        logits = net(x)
    want = (logits.argmax(1) == y).sum().item() / len(y)
    assert got["normalize"] == "imagenet" and got["val_images"] == 40 and got["input_shape"] == [3, CROP, CROP]
    assert got["val_top1"] == want
    assert got["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert 0.3 < want  # the checkpoint learned something: the equality is not two chance-level numbers


def test_a_torchvision_teacher_sees_imagenet_normalised_inputs(tree, tmp_path):
    root, weights, net = tree
    store = ArtifactStore(tmp_path / "store")
    ds = dataset(
        root, image_size=CROP, train_crop=80, train_resize=80, val_resize=RESIZE, val_crop=CROP, minival_per_class=2
    )
    key = teacher_key(ds, tcfg(weights, min_top1_factor=2.0))
    stages.build(key, store)
    m = store.manifest(key)
    # minival: train-folder images prepared like val; the figure is torchvision's on those files
    lst = imagefolder.listing(str(root), 2, None)
    x, y = tv_eval(root / "train", [f.decode().removeprefix("train/") for f in lst.files["minival"]])
    with torch.no_grad():
        want = (net(x).argmax(1) == y).sum().item() / len(y)
    assert m["normalize"] == "imagenet" and m["minival_top1"] == want
    # in trials the teacher takes the data set's normalisation and re-normalises inside
    teacher = load_teacher(key, store, "cpu")
    assert isinstance(teacher, Renormalize)
    splits = load_splits(ds, store)
    from workers.train import channel_stats

    mean, std = channel_stats(splits.train_x, "cpu")
    u = torch.as_tensor(splits.minival_x[np.arange(8)]).float() / 255.0
    with torch.no_grad():
        a = teacher((u - mean) / std)
        b = net((u - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_normalisation_rule():
    rn = Named.make("resnet18", {"small_input_stem": "auto"})
    assert normalization(TeacherConfig(arch=rn, weights="/w.pth"), (3, 224, 224)) == "imagenet"
    assert normalization(TeacherConfig(arch=rn, weights="/w.pth"), (3, 32, 32)) == "dataset"  # 3x3 stem: ours
    assert normalization(TeacherConfig(arch=rn), (3, 224, 224)) == "dataset"  # trained here
    conv = Named.make("convnet", {"depth": 3})
    assert normalization(TeacherConfig(arch=conv, weights="/w.pth"), (3, 224, 224)) == "dataset"
    assert normalization(TeacherConfig(arch=rn, weights="/w.pth", normalize="dataset"), (3, 224, 224)) == "dataset"
    assert normalization(TeacherConfig(arch=conv, normalize="imagenet"), (3, 32, 32)) == "imagenet"


def test_a_1000_way_imagenet_head_needs_the_wnids_in_sorted_order(wnid_tree, tmp_path):
    """1000 WNID folders x 2 JPEGs, flat val with a label file: the 1000-way torchvision head is accepted on
    WNID classes (sorted) and refused on classes that are not WNIDs."""
    root, labels = wnid_tree
    store = ArtifactStore(tmp_path / "store")
    net = resnet18(num_classes=1000)
    weights = tmp_path / "resnet18-1000.pth"
    torch.save(net.state_dict(), weights)
    ds = dataset(root, image_size=64, minival_per_class=1, val_labels=str(labels))
    splits = load_splits(ds, store)
    assert splits.class_names == tuple(wnids(1000)) and len(splits.test_y) == 1000
    got = check_teacher(ds.to_json(), tcfg(weights).to_json(), store, device="cpu")
    assert got["classes"] == 1000 and got["normalize"] == "imagenet"
    import shutil

    other = tmp_path / "other"
    shutil.copytree(root / "train", other / "train", symlinks=True)
    (other / "train" / wnids(1000)[0]).rename(other / "train" / "cat")
    shutil.copytree(root / "val", other / "val")
    flat_csv = other / "LOC_val_solution.csv"
    flat_csv.write_text(labels.read_text().replace(wnids(1000)[0], "cat"))
    bad = dataset(other, image_size=64, minival_per_class=1, val_labels=str(flat_csv))
    with pytest.raises(DataError, match=r"include \['cat'\], which are not WNIDs"):
        check_teacher(bad.to_json(), tcfg(weights).to_json(), ArtifactStore(tmp_path / "s2"), device="cpu")

"""The chapter 12 checkers (ddpm.exercises.guidance) accept right answers (the reference and the
book's solutions), reject each typical mistake with its hint, and reject unsolved stubs and
garbage."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import guidance as ex
from ddpm.guidance import guided
from ddpm.unet import UNet


# The book's solutions (book/12_guidance.ipynb, exercises 12.1 and 12.2), written out again.
def guided_eps(model, x, t, y, w, num_classes):
    null = torch.full_like(y, num_classes)
    cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return (1 + w) * cond - w * uncond


def drop_labels(y, u, p, num_classes):
    return torch.where(u < p, num_classes, y)


def guided_eps_two_calls(model, x, t, y, w, num_classes):
    """Another right answer: two calls, the unconditional one with y=None (the null class)."""
    cond, uncond = model(x, t, y), model(x, t, None)
    return cond + w * (cond - uncond)


def drop_labels_masked(y, u, p, num_classes):
    out = y.clone()
    out[u < p] = num_classes
    return out


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_guided_eps, guided_eps, ex._GUIDED_MISTAKES,
                 reference=ex._guided_reference, also_right=(guided_eps_two_calls,)),
        Exercise(ex.check_drop_labels, drop_labels, ex._DROPOUT_MISTAKES,
                 reference=ex._dropout_reference, also_right=(drop_labels_masked,)),
    )  # fmt: skip


def test_garbage_is_rejected():
    assert not ex.check_guided_eps(lambda model, x, *a: torch.zeros_like(x), verbose=False)
    assert not ex.check_guided_eps(lambda model, x, *a: x, verbose=False)
    assert not ex.check_guided_eps(lambda *a: "hello", verbose=False)
    assert not ex.check_drop_labels(lambda y, *a: y, verbose=False)  # no dropout at all
    assert not ex.check_drop_labels(lambda y, u, p, k: torch.full_like(y, k), verbose=False)


def test_the_cases_can_tell_the_mistakes_apart():
    """No case has w = 0 or 1, and each has labels the toy model treats differently from the
    null class; every draw set holds dropped and kept labels."""
    for model, x, t, y, w, _k in ex._guided_cases():
        assert w not in (0, 1)
        assert (model(x, t, y) - model(x, t, None)).abs().max() > 0.1
    for y, u, p, k in ex._dropout_cases():
        assert (u < p).any() and (u >= p).any() and {0, k - 1} <= set(y.tolist())


def test_the_reference_is_what_ddpm_guidance_computes():
    """On a real conditional UNet the checker's reference equals ddpm.guidance.guided."""
    torch.manual_seed(0)
    net = UNet.from_preset("digits", ch=16, num_classes=10).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
        x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 500, 999, 30])
        y = torch.tensor([0, 3, 9, 3])
        want = ex._guided_reference(net, x, t, y, 1.7, 10)
        torch.testing.assert_close(guided(net, y, 1.7)(x, t), want, rtol=1e-4, atol=1e-4)

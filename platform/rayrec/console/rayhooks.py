"""The one place rayrec reaches into Ray's private API: routing worker output to the console.

Ray prints every worker's stdout/stderr lines on the driver (``log_to_driver``) through a
dispatcher with no public hook; rayrec's console keeps only rayrec's marked lines and the
progress records in them (:func:`rayrec.console.worker.forward_worker_lines`). The public
alternative, ``log_to_driver=False``, would drop the progress records too. So this module
swaps the printer, for the Ray version the project pins, and undoes it on close; when the
private names are gone (another Ray version) it does nothing and worker output prints as Ray
prints it: louder, never lost.
"""

from __future__ import annotations

from collections.abc import Callable

import ray


def route_worker_output(forward: Callable[..., None]) -> Callable[[], None] | None:
    """Send Ray's worker lines and raylet messages on the driver to ``forward`` instead of
    Ray's printer; returns the undo, or None when nothing was swapped."""
    try:
        import ray._private.worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    original = [h for name, h in dispatcher.handlers if name == "ray_print_logs"]
    if not original or not hasattr(ray_worker, "print_to_stdstream"):  # log_to_driver is off
        return None
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", forward)  # ray.shutdown removes it
    # The raylet's messages to the driver are printed by this function, not the dispatcher.
    printer = ray_worker.print_to_stdstream
    ray_worker.print_to_stdstream = forward

    def undo() -> None:
        ray_worker.print_to_stdstream = printer
        dispatcher.remove_handler("ray_print_logs")
        if ray.is_initialized():
            dispatcher.add_handler("ray_print_logs", original[0])

    return undo

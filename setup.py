"""Build gilfree._core.

Environment switches (see README, "Development"):
  GILFREE_WERROR=1             -Wall -Wextra -Werror (the test build)
  GILFREE_SANITIZE=address     -fsanitize=address,undefined (run with the runtime preloaded: dev.py does it)
  GILFREE_SANITIZE=thread      -fsanitize=thread
  GILFREE_DEBUG=1              -O0 -g with the invariants checked (GF_ASSERT, -UNDEBUG)
"""
import os
import sys

if sys.platform != "linux" and not os.environ.get("GILFREE_ALLOW_UNSUPPORTED_PLATFORM"):
    # Timed waits use pthread condition variables on CLOCK_MONOTONIC (pthread_condattr_setclock), which
    # macOS lacks: there its deadlines would be compared with the wrong clock. Linux is supported.
    raise SystemExit(f"gilfree supports Linux only (this is {sys.platform}): its timed waits need "
                     "pthread_condattr_setclock(CLOCK_MONOTONIC)")

from setuptools import Extension, setup

SOURCES = ["src/module.c", "src/args.c", "src/process.c", "src/park.c", "src/ring.c", "src/chancore.c", "src/engine.c", "src/channel.c", "src/asyncop.c",
           "src/select.c", "src/netpoll.c", "src/poller.c", "src/procchan.c", "src/future.c", "src/pool.c", "src/parallel.c", "src/kernels.c"]

compile_args = ["-std=c11", "-D_GNU_SOURCE", "-fvisibility=hidden"]
link_args = []
if sys.platform != "win32":
    compile_args += ["-pthread"]
    link_args += ["-pthread"]

if os.environ.get("GILFREE_WERROR") == "1":
    compile_args += ["-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
                     "-Wno-unused-parameter"]

sanitize = os.environ.get("GILFREE_SANITIZE", "")
# CPython compiles extensions with -fwrapv, which defines signed overflow and so hides it from UBSan: the
# sanitizer builds undo it, so an overflow in the C core is reported instead of wrapping silently.
if sanitize == "address":
    flags = ["-fsanitize=address,undefined", "-fsanitize=signed-integer-overflow", "-fno-wrapv",
             "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args += flags + ["-O1", "-g"]
    link_args += flags
elif sanitize == "thread":
    flags = ["-fsanitize=thread", "-fno-wrapv"]
    compile_args += flags + ["-O1", "-g"]
    link_args += flags
elif sanitize:
    raise SystemExit(f"GILFREE_SANITIZE must be 'address' or 'thread', not {sanitize!r}")
elif os.environ.get("GILFREE_DEBUG") == "1":
    compile_args += ["-O0", "-g", "-UNDEBUG", "-DGILFREE_ASSERTIONS", "-fno-wrapv", "-ftrapv"]
else:
    compile_args += ["-O2"]

setup(
    package_dir={"": "python"},
    packages=["gilfree", "gilfree.bench", "gilfree.queue"],
    package_data={"gilfree": ["py.typed", "*.pyi"]},
    ext_modules=[
        Extension(
            "gilfree._core",
            sources=SOURCES,
            depends=["src/gilfree.h", "src/process.h", "src/park.h", "src/ring.h", "src/channel.h", "src/future.h", "src/parallel.h"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["rt"],  # shm_open (in libc itself since glibc 2.34)
        )
    ],
)

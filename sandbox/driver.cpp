// The Python driver that runs inside persistent and fork-server sandboxes (driver.h). Kept as a
// string so the server has no file to install; prepare() writes it to state_dir/driver/.
#include "sandbox/driver.h"

namespace shoal::sandbox {

const char* driver_source() {
  return R"PY(# shoal sandbox driver: runs inside the sandbox. Reads one JSON request per line on fd 3,
# writes one JSON result per line on fd 4; user output goes straight to fds 1 and 2 (pipes the
# server reads with caps). Ops: exec (code in the persistent namespace, notebook-style), fork (code
# in a forked child with a fresh namespace), shell (/bin/sh -c in a child). After each op every
# other process in the sandbox's PID namespace is killed: no background process outlives a call.
import ast, json, os, resource, signal, sys, time, traceback
import math, re, collections, itertools, functools, random, string  # warm for forked runs

CTL_IN, CTL_OUT = 3, 4
ME = os.getpid()
os.set_inheritable(CTL_IN, False)
os.set_inheritable(CTL_OUT, False)
G = {"__name__": "__main__", "__builtins__": __builtins__}
HARD_CPU = resource.getrlimit(resource.RLIMIT_CPU)[1]


class CpuLimitExceeded(BaseException):
    pass


def _on_xcpu(signum, frame):
    raise CpuLimitExceeded("CPU time limit exceeded")


signal.signal(signal.SIGXCPU, _on_xcpu)


def send(obj):
    os.write(CTL_OUT, (json.dumps(obj) + "\n").encode())


def cpu_seconds():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_others():
    for attempt in range(200):
        alive = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == 1 or pid == ME:
                continue
            try:
                with open("/proc/%d/stat" % pid, "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state in (b"Z", b"X"):
                continue
            alive += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        if alive == 0:
            return
        time.sleep(0.001)


def print_error():
    # The user's traceback without the driver's own frames.
    etype, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)


def flush():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except Exception:
            pass


def exit_status(e):
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def run_cell(code, namespace, name):
    # Like a notebook cell: a trailing expression's value is printed.
    tree = ast.parse(code, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, name, "eval"), namespace)
        if value is not None:
            print(repr(value))


def op_exec(req):
    status, note = 0, None
    start = cpu_seconds()
    cpu = max(1, int(req.get("cpu_s", 10)))
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        resource.setrlimit(resource.RLIMIT_CPU,
                           (int(own.ru_utime + own.ru_stime) + cpu + 1, HARD_CPU))
    except (ValueError, OSError):
        pass
    try:
        run_cell(req["code"], G, "<cell>")
    except SystemExit as e:
        status = exit_status(e)
    except CpuLimitExceeded:
        status, note = 1, "cpu_limit"
        print("CpuLimitExceeded: CPU time limit exceeded", file=sys.stderr)
    except BaseException:
        status = 1
        print_error()
    flush()
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (HARD_CPU, HARD_CPU))
    except (ValueError, OSError):
        pass
    kill_others()
    return {"exit": status, "cpu_ms": (cpu_seconds() - start) * 1000, "note": note}


def child_setup(req):
    os.close(CTL_IN)
    os.close(CTL_OUT)
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    cpu = max(1, int(req.get("cpu_s", 10)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if req.get("memory_bytes"):
        m = int(req["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (m, m))
    os.chdir(req.get("cwd") or "/work")


def op_child(req):
    flush()
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            child_setup(req)
            if req["op"] == "shell":
                os.execv("/bin/sh", ["sh", "-c", req["command"]])
            try:
                run_cell(req["code"], {"__name__": "__main__", "__builtins__": __builtins__},
                         "<run>")
                status = 0
            except SystemExit as e:
                status = exit_status(e)
            except BaseException:
                status = 1
                print_error()
        finally:
            flush()
            os._exit(status)
    _, wstatus, usage = os.wait4(pid, 0)
    kill_others()
    note = None
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        code = 128 + sig
        # SIGXCPU comes only from the soft CPU limit (rusage can read a little under it on a busy
        # machine); SIGKILL is the hard limit only when the time says so.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >=
                                     max(1, int(req.get("cpu_s", 10))) - 0.05):
            note = "cpu_limit"
    else:
        code = os.WEXITSTATUS(wstatus)
    return {"exit": code, "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000, "note": note}


def main():
    send({"ready": True, "pid": ME})
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(CTL_IN, 1 << 20)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        req = json.loads(line)
        try:
            if req["op"] == "exec":
                result = op_exec(req)
            else:
                result = op_child(req)
        except BaseException as e:
            result = {"exit": 1, "cpu_ms": 0, "note": "driver: %r" % (e,)}
        send(result)


main()
)PY";
}

}  // namespace shoal::sandbox

// The MCP client: a small MCP server (stdio, JSON-RPC 2.0) runs inside a sandbox; its tools appear
// in list_tools as NAME__TOOL with their input schemas, calls reach it, its errors come back as
// tool errors, and it is restarted after it dies.
#include "tests/sandbox/sandbox_fixture.h"

namespace shoal::sandbox::testing {
namespace {

// A minimal MCP server: initialize, tools/list (two pages), tools/call; notifications ignored.
constexpr const char* kServer = R"PY(import json, os, sys
TOOLS = [
  {"name": "add", "description": "Add two integers",
   "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"},
                   "b": {"type": "integer"}}, "required": ["a", "b"]}},
  {"name": "peek", "description": "Does /etc/shadow exist?", "inputSchema": {"type": "object"}},
  {"name": "crash", "description": "Exit", "inputSchema": {"type": "object"}},
]
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, params = msg["method"], msg.get("params", {})
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "demo", "version": "1"}}
    elif method == "tools/list":
        page = int(params.get("cursor", 0))
        result = {"tools": TOOLS[page:page + 2]}
        if page + 2 < len(TOOLS):
            result["nextCursor"] = str(page + 2)
    elif method == "tools/call":
        name, args = params["name"], params.get("arguments", {})
        if name == "add":
            result = {"content": [{"type": "text", "text": str(args["a"] + args["b"])}]}
        elif name == "peek":
            result = {"content": [{"type": "text", "text": str(os.path.exists("/etc/shadow"))}],
                      "isError": False}
        elif name == "crash":
            os._exit(3)
        else:
            print(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                              "error": {"code": -32602, "message": "no tool " + name}}), flush=True)
            continue
    else:
        result = {}
    print("log line on stderr", file=sys.stderr, flush=True)
    print(json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                      "params": {"level": "info", "data": "hi"}}), flush=True)
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
)PY";

TEST(SandboxMcp, ToolsOfASandboxedMcpServerWorkLikeBuiltIns) {
  std::string name = unique_name("mcp");
  std::string state = "/tmp/shoal-sandbox-tests/" + name;
  ServerOptions opt;
  opt.endpoint = "ipc://" + state + ".sock";
  opt.state_dir = state;
  opt.exec.mcp_servers = {{"demo", {"python3", "-u", "server.py"}, {{"server.py", kServer}}}};
  {
    Server server(opt);
    std::thread serving([&] { server.run(); });
    {
      Client c({server.endpoint(), 30000, 3});
      Reply list = c.admin("list_tools");
      ASSERT_EQ(list.status, "ok") << describe(list);
      std::vector<std::string> names;
      for (auto& t : list.result) names.push_back(t["function"]["name"]);
      ASSERT_EQ(names.size(), 8u) << list.result.dump();
      EXPECT_EQ(names[5], "demo__add");
      EXPECT_EQ(names[7], "demo__crash");  // from the second page
      EXPECT_EQ(list.result[5]["function"]["parameters"]["required"], json({"a", "b"}));

      Reply add = c.call("demo__add", {{"a", 2}, {"b", 40}});
      EXPECT_EQ(add.status, "ok") << describe(add);
      EXPECT_EQ(add.stdout_text, "42");
      EXPECT_EQ(add.mode, "mcp");
      Reply peek = c.call("demo__peek", json::object());
      EXPECT_EQ(peek.stdout_text, "False") << describe(peek);  // it runs in a sandbox too
      Reply missing = c.call("demo__nope", json::object());
      EXPECT_EQ(missing.error_kind, "tool_error") << describe(missing);
      EXPECT_NE(missing.error_message.find("no tool nope"), std::string::npos);
      Reply crash = c.call("demo__crash", json::object());
      EXPECT_EQ(crash.error_kind, "sandbox_died") << describe(crash);
      Reply again = c.call("demo__add", {{"a", 1}, {"b", 1}});  // restarted
      EXPECT_EQ(again.stdout_text, "2") << describe(again);
      Reply unknown = c.call("other__add", json::object());
      EXPECT_EQ(unknown.error_kind, "unknown_tool");
      expect_healthy(c);
    }
    server.stop();
    serving.join();
  }
  EXPECT_EQ(settle_descendants(0), 0);
  std::error_code ec;
  std::filesystem::remove_all(state, ec);
}

}  // namespace
}  // namespace shoal::sandbox::testing

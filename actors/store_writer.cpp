// The store writer (store_writer.h).
#include "actors/store_writer.h"

#include "base/log.h"

namespace shoal::actors {

using nlohmann::json;

namespace {
// A failed write is answered with the error (the requester decides), never kills the writer.
template <class F>
caf::result<bool> guarded(F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    log::error("run store: {}", e.what());
    return caf::make_error(caf::sec::runtime_error, std::string(e.what()));
  }
}
}  // namespace

caf::behavior store_writer_actor(caf::event_based_actor*, std::shared_ptr<RunStore> store) {
  return {
      [store](write_atom, const StepRecord& step) -> caf::result<bool> {
        return guarded([&] { store->write_step(step); });
      },
      [store](ckpt_atom, const CheckpointRecord& c) -> caf::result<bool> {
        return guarded([&] { store->write_checkpoint(c); });
      },
      [store](eval_atom, const std::string& suite, const std::string& label, int64_t gstep,
              const std::string& results,
              const std::vector<EpisodeRecord>& episodes) -> caf::result<bool> {
        return guarded([&] {
          store->write_episodes(episodes);
          store->write_eval(suite, label, gstep, json::parse(results));
        });
      },
      [store](event_atom, const std::string& kind, const std::string& message,
              const std::string& data) {
        guarded([&] { store->event(kind, message, json::parse(data)); });
      },
  };
}

caf::actor spawn_store_writer(caf::actor_system& sys, std::shared_ptr<RunStore> store) {
  return sys.spawn<caf::detached>(store_writer_actor, std::move(store));
}

}  // namespace shoal::actors

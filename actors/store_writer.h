// The store writer: the one actor that writes the run store (runs/NAME/run.sqlite), so writes
// from the stage driver, the collector and the runner are serialised and each step lands in one
// transaction. Spawned detached (SQLite I/O blocks). Requests answer `true` once durable:
//   write_atom, StepRecord;  ckpt_atom, CheckpointRecord;
//   eval_atom, suite, label, gstep, results-json-text, std::vector<EpisodeRecord>;
//   event_atom, kind, message, data-json-text  (no answer).
// Not the store's schema (run_store.h).
#pragma once

#include <memory>

#include "actors/messages.h"

namespace shoal::actors {

caf::behavior store_writer_actor(caf::event_based_actor* self, std::shared_ptr<RunStore> store);
// The writer on its own thread.
caf::actor spawn_store_writer(caf::actor_system& sys, std::shared_ptr<RunStore> store);

}  // namespace shoal::actors

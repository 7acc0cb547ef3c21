// Registration of the run's message types (messages.h).
#include "actors/messages.h"

namespace shoal::actors {

void add_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<SamplingParams>("shoal::SamplingParams");
  cfg.add_message_type<GenOutput>("shoal::GenOutput");
  cfg.add_message_type<AgentLimits>("shoal::AgentLimits");
  cfg.add_message_type<rl::Sample>("shoal::rl::Sample");
  cfg.add_message_type<TrainRequest>("shoal::TrainRequest");
  cfg.add_message_type<StepMetrics>("shoal::StepMetrics");
  cfg.add_message_type<ToolCallMsg>("shoal::ToolCallMsg");
  cfg.add_message_type<VerifyRequest>("shoal::VerifyRequest");
  cfg.add_message_type<RewardMsg>("shoal::RewardMsg");
  cfg.add_message_type<EpisodeJob>("shoal::EpisodeJob");
  cfg.add_message_type<EpisodeRecord>("shoal::EpisodeRecord");
  cfg.add_message_type<EpisodeResult>("shoal::EpisodeResult");
  cfg.add_message_type<GrpoBatch>("shoal::GrpoBatch");
  cfg.add_message_type<StepRecord>("shoal::StepRecord");
  cfg.add_message_type<CheckpointRecord>("shoal::CheckpointRecord");
  cfg.add_message_type<std::vector<int32_t>>("std::vector<int32_t>");
}

}  // namespace shoal::actors

// Python bindings of the dispatch area: make_dispatch_meta, DispatchMeta, solve_dispatch.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.hpp"
#include "bindings/range_lists.hpp"
#include "dispatch/dispatch_meta.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace magi::bindings {

namespace {

DispatchParams make_params(const char* fn, const std::string& alg, double top_p, int64_t seed,
                           double allocation_ratio) {
  DispatchParams p;
  p.alg = dispatch_alg_from_string(fn, alg);
  p.top_p = top_p;
  p.seed = static_cast<uint64_t>(seed);
  p.allocation_ratio = allocation_ratio;
  return p;
}

}  // namespace

void bind_dispatch(py::module_& m) {
  py::class_<DispatchMeta>(m, "DispatchMeta", R"doc(
Which chunks each rank holds after dispatch (read-only; build with make_dispatch_meta).

The padded sequence [0, total_seqlen) is cut into num_chunks chunks of chunk_size tokens; rank r
holds partitions[r] (ascending), back to back, as its local shard of shard_seqlen tokens.
)doc")
      .def_property_readonly("total_seqlen", [](const DispatchMeta& d) { return d.total_seqlen; })
      .def_property_readonly("chunk_size", [](const DispatchMeta& d) { return d.chunk_size; })
      .def_property_readonly("num_chunks", [](const DispatchMeta& d) { return d.num_chunks; })
      .def_property_readonly("cp_size", [](const DispatchMeta& d) { return d.cp_size; })
      .def_property_readonly("shard_seqlen", [](const DispatchMeta& d) { return d.shard_seqlen; })
      .def_property_readonly("max_valid_ids", [](const DispatchMeta& d) { return d.max_valid_ids; })
      .def_property_readonly("chunk_areas", [](const DispatchMeta& d) { return d.chunk_areas; })
      .def_property_readonly("partitions", [](const DispatchMeta& d) { return d.partitions; })
      .def_property_readonly("perm_idxs", [](const DispatchMeta& d) { return d.perm_idxs; })
      .def_property_readonly("unperm_idxs", [](const DispatchMeta& d) { return d.unperm_idxs; })
      .def_property_readonly("host_ranges_per_rank",
                             [](const DispatchMeta& d) {
                               py::list out;
                               for (const auto& h : d.host_ranges_per_rank) out.append(ranges_to_list(h));
                               return out;
                             })
      .def(
          "position_ids",
          [](const DispatchMeta& d, int64_t rank) {
            auto ids = d.position_ids(rank);
            py::array_t<int64_t> arr(static_cast<py::ssize_t>(ids.size()));
            std::copy(ids.begin(), ids.end(), arr.mutable_data());
            return arr;
          },
          py::arg("rank"),
          "Global position of each local token of `rank` (numpy int64 [shard_seqlen]), clamped to "
          "max_valid_ids - 1 so padding reuses the last valid position.")
      .def("__repr__", &DispatchMeta::repr)
      .def("__eq__", [](const DispatchMeta& a, const DispatchMeta& b) { return a == b; })
      .def("__hash__",
           [](const DispatchMeta& d) {
             return py::hash(py::make_tuple(d.total_seqlen, d.chunk_size, d.cp_size,
                                            py::cast(d.partitions).attr("__str__")()));
           })
      .def(py::pickle(
          [](const DispatchMeta& d) {
            return py::make_tuple(d.total_seqlen, d.chunk_size, d.num_chunks, d.cp_size,
                                  d.max_valid_ids, d.chunk_areas, d.partitions);
          },
          [](const py::tuple& t) {
            MAGI_CHECK(t.size() == 7, "DispatchMeta.__setstate__(): expected a 7-tuple, got "
                                          << t.size() << " items.");
            DispatchMeta d;
            d.total_seqlen = t[0].cast<int64_t>();
            d.chunk_size = t[1].cast<int64_t>();
            d.num_chunks = t[2].cast<int64_t>();
            d.cp_size = t[3].cast<int64_t>();
            d.max_valid_ids = t[4].cast<int64_t>();
            d.chunk_areas = t[5].cast<std::vector<int64_t>>();
            d.partitions = t[6].cast<std::vector<std::vector<int64_t>>>();
            d.finalize();
            return d;
          }));

  m.def(
      "make_dispatch_meta",
      [](const RangePairs& q_ranges, const RangePairs& k_ranges, const std::vector<int64_t>& mask_types,
         int64_t total_seqlen, int64_t chunk_size, int64_t cp_size, const std::string& alg, double top_p,
         int64_t seed, double allocation_ratio) {
        const auto params = make_params("make_dispatch_meta()", alg, top_p, seed, allocation_ratio);
        py::gil_scoped_release release;
        return make_dispatch_meta(q_ranges, k_ranges, mask_types, total_seqlen, chunk_size, cp_size,
                                  params);
      },
      py::arg("q_ranges"), py::arg("k_ranges"), py::arg("mask_types"), py::arg("total_seqlen"),
      py::arg("chunk_size"), py::arg("cp_size"), py::arg("alg") = "min_heap", py::kw_only(),
      py::arg("top_p") = 0.0, py::arg("seed") = 0, py::arg("allocation_ratio") = 1.0,
      R"doc(
Chunk the padded mask along q, weigh each chunk by its visible area and balance the chunks over
cp_size ranks (equal chunk counts). Raises RangeError on bad input.
)doc");

  m.def(
      "solve_dispatch",
      [](const std::vector<int64_t>& workloads, int64_t cp_size, const std::string& alg, double top_p,
         int64_t seed, double allocation_ratio,
         std::optional<std::vector<std::vector<std::pair<int64_t, int64_t>>>> job_k_ranges,
         std::optional<std::vector<int64_t>> job_sample_ids) {
        const char* fn = "solve_dispatch()";
        const auto params = make_params(fn, alg, top_p, seed, allocation_ratio);
        JobInfo info;
        if (job_k_ranges) {
          MAGI_CHECK(job_k_ranges->size() == workloads.size(),
                     fn << ": len(job_k_ranges)=" << job_k_ranges->size()
                        << " != len(workloads)=" << workloads.size() << ".");
          for (size_t j = 0; j < job_k_ranges->size(); ++j) {
            std::vector<AttnRange> rs;
            for (const auto& pr : (*job_k_ranges)[j]) {
              MAGI_CHECK(pr.first <= pr.second, fn << ": job_k_ranges[" << j << "] has inverted range ("
                                                   << pr.first << ", " << pr.second << ").");
              if (pr.first < pr.second) rs.push_back(AttnRange(pr.first, pr.second));
            }
            std::sort(rs.begin(), rs.end());
            std::vector<AttnRange> merged;
            for (const auto& r : rs) {
              if (!merged.empty() && r.start <= merged.back().end)
                merged.back().end = std::max(merged.back().end, r.end);
              else
                merged.push_back(r);
            }
            info.k_ranges.push_back(std::move(merged));
          }
        }
        if (job_sample_ids) {
          MAGI_CHECK(job_sample_ids->size() == workloads.size(),
                     fn << ": len(job_sample_ids)=" << job_sample_ids->size()
                        << " != len(workloads)=" << workloads.size() << ".");
          info.sample_ids = *job_sample_ids;
        }
        py::gil_scoped_release release;
        return solve_dispatch(fn, workloads, cp_size, params, &info);
      },
      py::arg("workloads"), py::arg("cp_size"), py::arg("alg") = "min_heap", py::kw_only(),
      py::arg("top_p") = 0.0, py::arg("seed") = 0, py::arg("allocation_ratio") = 1.0,
      py::arg("job_k_ranges") = py::none(), py::arg("job_sample_ids") = py::none(),
      R"doc(
Partition job indices into cp_size equal-count buckets (each sorted ascending) with the named
algorithm. job_k_ranges feeds topp_heap's IoU affinity, job_sample_ids groups jobs for
sorted_sequential_select (-1: no sample).
)doc");
}

}  // namespace magi::bindings

// The DSA top-k selection with the reference's tie-breaking, usable on host and device. The
// reference (torch.topk on the CPU, and so the CPU backend's topk_rows) runs libstdc++'s
// std::nth_element, or std::partial_sort when k * 64 <= row length, on (value, position) pairs
// comparing values only; which of several equal scores survive depends on that algorithm's exact
// sequence of swaps. The functions below re-trace those steps (introselect with median-of-three
// pivots, insertion sort below 4 elements, heap selection) so a GPU thread picks exactly the set
// the CPU picks. Checked against the real std:: algorithms in tests/cuda/test_topk_select.cpp.
// Not a fast top-k: one thread walks a whole row.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SHOAL_HD __host__ __device__
#else
#define SHOAL_HD
#endif

namespace shoal::kernels::topk {

struct Item {
  double v;   // the score (positions past the query hold the lowest double)
  int32_t p;  // the key position
};

// The reference comparator: NaN first, then greater values; positions are ignored.
struct Greater {
  SHOAL_HD bool operator()(const Item& a, const Item& b) const {
    const bool an = a.v != a.v, bn = b.v != b.v;
    return (an && !bn) || a.v > b.v;
  }
};
// A total order for presenting a selection: greater value first, then lower position.
struct Better {
  SHOAL_HD bool operator()(const Item& a, const Item& b) const {
    return Greater()(a, b) || (!Greater()(b, a) && a.p < b.p);
  }
};

SHOAL_HD inline void swap_items(Item* a, Item* b) {
  Item t = *a;
  *a = *b;
  *b = t;
}

SHOAL_HD inline int64_t floor_log2(int64_t n) {
  int64_t r = 0;
  while (n > 1) {
    n >>= 1;
    ++r;
  }
  return r;
}

template <typename Cmp>
SHOAL_HD void push_heap(Item* first, int64_t hole, int64_t top, Item value, Cmp comp) {
  int64_t parent = (hole - 1) / 2;
  while (hole > top && comp(first[parent], value)) {
    first[hole] = first[parent];
    hole = parent;
    parent = (hole - 1) / 2;
  }
  first[hole] = value;
}

template <typename Cmp>
SHOAL_HD void adjust_heap(Item* first, int64_t hole, int64_t len, Item value, Cmp comp) {
  const int64_t top = hole;
  int64_t child = hole;
  while (child < (len - 1) / 2) {
    child = 2 * (child + 1);
    if (comp(first[child], first[child - 1])) child--;
    first[hole] = first[child];
    hole = child;
  }
  if ((len & 1) == 0 && child == (len - 2) / 2) {
    child = 2 * (child + 1);
    first[hole] = first[child - 1];
    hole = child - 1;
  }
  push_heap(first, hole, top, value, comp);
}

template <typename Cmp>
SHOAL_HD void make_heap(Item* first, int64_t len, Cmp comp) {
  if (len < 2) return;
  int64_t parent = (len - 2) / 2;
  while (true) {
    adjust_heap(first, parent, len, first[parent], comp);
    if (parent == 0) return;
    parent--;
  }
}

// Leaves the `middle` best items (by comp) in [0, middle), as a heap.
template <typename Cmp>
SHOAL_HD void heap_select(Item* first, int64_t middle, int64_t last, Cmp comp) {
  make_heap(first, middle, comp);
  for (int64_t i = middle; i < last; ++i)
    if (comp(first[i], first[0])) {  // pop_heap(first, middle, i)
      Item value = first[i];
      first[i] = first[0];
      adjust_heap(first, 0, middle, value, comp);
    }
}

// Sorts a heap of len items into comp order.
template <typename Cmp>
SHOAL_HD void sort_heap(Item* first, int64_t len, Cmp comp) {
  while (len > 1) {
    --len;
    Item value = first[len];
    first[len] = first[0];
    adjust_heap(first, 0, len, value, comp);
  }
}

template <typename Cmp>
SHOAL_HD void insertion_sort(Item* first, int64_t len, Cmp comp) {
  for (int64_t i = 1; i < len; ++i) {
    Item val = first[i];
    if (comp(val, first[0])) {
      for (int64_t j = i; j > 0; --j) first[j] = first[j - 1];
      first[0] = val;
    } else {
      int64_t last = i, next = i - 1;
      while (comp(val, first[next])) {
        first[last] = first[next];
        last = next;
        --next;
      }
      first[last] = val;
    }
  }
}

template <typename Cmp>
SHOAL_HD void move_median_to_first(Item* result, Item* a, Item* b, Item* c, Cmp comp) {
  if (comp(*a, *b)) {
    if (comp(*b, *c))
      swap_items(result, b);
    else if (comp(*a, *c))
      swap_items(result, c);
    else
      swap_items(result, a);
  } else if (comp(*a, *c)) {
    swap_items(result, a);
  } else if (comp(*b, *c)) {
    swap_items(result, c);
  } else {
    swap_items(result, b);
  }
}

// Partitions (first, last) around *pivot; returns the cut.
template <typename Cmp>
SHOAL_HD Item* unguarded_partition(Item* first, Item* last, const Item* pivot, Cmp comp) {
  while (true) {
    while (comp(*first, *pivot)) ++first;
    --last;
    while (comp(*pivot, *last)) --last;
    if (!(first < last)) return first;
    swap_items(first, last);
    ++first;
  }
}

// std::nth_element(first, first + nth, first + len, comp), step for step.
template <typename Cmp>
SHOAL_HD void nth_element(Item* first, int64_t nth, int64_t len, Cmp comp) {
  if (len == 0 || nth == len) return;
  Item* last = first + len;
  Item* nth_it = first + nth;
  int64_t depth = floor_log2(len) * 2;
  while (last - first > 3) {
    if (depth == 0) {
      heap_select(first, nth_it - first + 1, last - first, comp);
      swap_items(first, nth_it);
      return;
    }
    --depth;
    Item* mid = first + (last - first) / 2;
    move_median_to_first(first, first + 1, mid, last - 1, comp);
    Item* cut = unguarded_partition(first + 1, last, first, comp);
    if (cut <= nth_it)
      first = cut;
    else
      last = cut;
  }
  insertion_sort(first, last - first, comp);
}

// The reference's selection of the best kk of row[0, len) into row[0, kk) (set only; the order
// within is not the reference's).
SHOAL_HD inline void select_like_reference(Item* row, int64_t kk, int64_t len) {
  if (kk * 64 <= len)
    heap_select(row, kk, len, Greater());  // std::partial_sort's selection step
  else
    nth_element(row, kk - 1, len, Greater());
}

}  // namespace shoal::kernels::topk

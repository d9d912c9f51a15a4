// Per-sequence random streams.
//
// Every sequence owns a stream derived from (seed, prompt index, sequence index), so a
// sequence's samples do not depend on which other sequences share its batch, on the order
// in which prompts are admitted, or on which worker runs the prompt.
#pragma once

#include <cstdint>

namespace eager {

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// xoshiro256** seeded through splitmix64: small state, fast, good statistical quality.
class Rng {
public:
    Rng() : Rng(0, 0, 0) {}
    Rng(uint64_t seed, uint64_t prompt_index, uint64_t sequence_index) {
        uint64_t h = splitmix64(seed);
        h = splitmix64(h ^ (prompt_index * 0xD1B54A32D192ED03ULL));
        h = splitmix64(h ^ (sequence_index * 0x8CB92BA72F3D8DD7ULL));
        for (auto & word : state_) {
            h = splitmix64(h);
            word = h;
        }
    }

    uint64_t next() {
        const uint64_t result = rotl(state_[1] * 5, 7) * 9;
        const uint64_t t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return result;
    }

    // Uniform double in [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t state_[4];
};

}  // namespace eager

/*
 * jobs.h -- one kernel call as data, for the runtime and the Cython layer.
 *
 * A job names its update rule (`kind`, numbered in the order of LRCORE_RULES in
 * lrcore.h), its element type, its buffers and its hyperparameters (the rule's
 * lrcore_<rule>_hp in a union). lrcore_hp_fields describes each struct's fields
 * by name, offset and type (from the rule's field list in lrcore.h, which its
 * struct is made from), so that _core.pyx packs hyperparameters by name with
 * one generic packer; tests/test_kernels.py checks these descriptors against the
 * table of rules (lrcore/rules.py).
 */
#ifndef LRCORE_JOBS_H
#define LRCORE_JOBS_H

#include <stddef.h>
#include "lrcore.h"
#include "lrcore_lowp.h"

#define LRCORE__KIND(name, nstates) LRCORE_KIND_##name,
enum { LRCORE_RULES(LRCORE__KIND) LRCORE_NKINDS,
       /* Bandwidth probe (bench only): param and each non-NULL state += scale * grad. It
        * reads and writes the same streams as an update rule with that many state
        * buffers, with almost no arithmetic: the memory system's limit for that pattern. */
       LRCORE_PROBE = 63 };
#undef LRCORE__KIND
enum { LRCORE_F32 = 0, LRCORE_F64 = 1,
       LRCORE_LOWP = 2 /* bfloat16/float16 buffers: element types in job->lowp */ };
enum { LRCORE_ISA_BASELINE = 0, LRCORE_ISA_AVX2 = 1, LRCORE_ISA_AVX512 = 2 };

#define LRCORE__HP_MEMBER(name, nstates) lrcore_##name##_hp name;
typedef union {
    LRCORE_RULES(LRCORE__HP_MEMBER)
    struct { double scale; } probe;
} lrcore_hp;
#undef LRCORE__HP_MEMBER

typedef struct {
    int kind;            /* LRCORE_KIND_<rule> or LRCORE_PROBE */
    int dtype;           /* LRCORE_F32, LRCORE_F64 or LRCORE_LOWP */
    size_t n;            /* elements */
    char *param;
    const char *grad;
    char *state[3];      /* kernel order; NULL where absent */
    lrcore_hp hp;
    lrcore_lowp lowp;    /* dtype LRCORE_LOWP: element types, rounding, stream (lrcore_lowp.h) */
} lrcore_job;

/* ---- field descriptors ------------------------------------------------------------- */

enum { LRCORE_FIELD_DOUBLE = 0, LRCORE_FIELD_INT64 = 1, LRCORE_FIELD_INT = 2 };

typedef struct {
    const char *name;
    size_t offset;       /* bytes from the start of lrcore_hp */
    int type;            /* LRCORE_FIELD_* */
} lrcore_field;

/* Names of the rules, by kind. */
static inline const char *lrcore_kind_name(int kind)
{
#define LRCORE__NAME(name, nstates) #name,
    static const char *const names[] = { LRCORE_RULES(LRCORE__NAME) };
#undef LRCORE__NAME
    return kind >= 0 && kind < LRCORE_NKINDS ? names[kind] : 0;
}

/* Number of state buffers of a rule (its kernel's state arguments). */
static inline int lrcore_kind_nstates(int kind)
{
#define LRCORE__NSTATES(name, nstates) nstates,
    static const int counts[] = { LRCORE_RULES(LRCORE__NSTATES) };
#undef LRCORE__NSTATES
    return kind >= 0 && kind < LRCORE_NKINDS ? counts[kind] : 0;
}

/* The fields of a rule's hyperparameter struct, in declaration order: made from the
 * rule's LRCORE_HP_FIELDS_<rule> list in lrcore.h, the list its struct is made from, so
 * a new rule needs nothing here. */
#define LRCORE__FIELD_TYPE_double LRCORE_FIELD_DOUBLE
#define LRCORE__FIELD_TYPE_int64_t LRCORE_FIELD_INT64
#define LRCORE__FIELD_TYPE_int LRCORE_FIELD_INT
#define LRCORE__FIELD(type, f) {#f, offsetof(S, f), LRCORE__FIELD_TYPE_##type},
static inline const lrcore_field *lrcore_hp_fields(int kind, size_t *count)
{
    switch (kind) {
#define LRCORE__FIELDS(name, nstates) \
    case LRCORE_KIND_##name: { \
        typedef lrcore_##name##_hp S; \
        static const lrcore_field fields[] = { LRCORE_HP_FIELDS_##name(LRCORE__FIELD) }; \
        *count = sizeof fields / sizeof fields[0]; \
        return fields; }
    LRCORE_RULES(LRCORE__FIELDS)
#undef LRCORE__FIELDS
    default: *count = 0; return 0;
    }
}
#undef LRCORE__FIELD
#undef LRCORE__FIELD_TYPE_double
#undef LRCORE__FIELD_TYPE_int64_t
#undef LRCORE__FIELD_TYPE_int

#endif

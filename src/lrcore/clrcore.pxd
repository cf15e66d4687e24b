# clrcore.pxd -- Cython declarations of lrcore.h, the header-only C99 kernels.
#
# Use from another extension (no Python in the loop, callable without the GIL):
#
#     from lrcore.clrcore cimport lrcore_adam_f32, lrcore_adam_hp, lrcore_adam_defaults
#     cdef lrcore_adam_hp hp = lrcore_adam_defaults(1e-3, step)
#     with nogil:
#         lrcore_adam_f32(n, &param[0], &grad[0], &m[0], &v[0], NULL, &hp)
#
# and build it with include_dirs=[lrcore.get_include()] (and libraries=["m"]). Each
# kernel performs ONE optimizer step numbered hp.step (1 for the first) in place; the
# equations are in lrcore_body.h above each loop and in lrcore.rules. Single-threaded:
# split the range yourself to thread (any split gives the same result). The structs'
# field order is lrcore.rules' hyperparameter order.
from libc.stdint cimport int64_t

cdef extern from "lrcore.h" nogil:
    int LRCORE_ABI_VERSION

    ctypedef struct lrcore_sgd_hp:
        double lr, momentum, dampening, weight_decay, grad_scale
        int64_t step
        int nesterov, maximize
        int init_buffer
    ctypedef struct lrcore_adam_hp:
        double lr, beta1, beta2, eps, weight_decay, grad_scale
        int64_t step
        int decoupled_weight_decay, maximize
    ctypedef struct lrcore_adagrad_hp:
        double lr, lr_decay, weight_decay, eps, grad_scale
        int64_t step
        int maximize
    ctypedef struct lrcore_rmsprop_hp:
        double lr, alpha, eps, weight_decay, momentum, grad_scale
        int64_t step
        int maximize
    ctypedef struct lrcore_adadelta_hp:
        double lr, rho, eps, weight_decay, grad_scale
        int64_t step
        int maximize
    ctypedef struct lrcore_adamax_hp:
        double lr, beta1, beta2, eps, weight_decay, grad_scale
        int64_t step
        int maximize
    ctypedef struct lrcore_nadam_hp:
        double lr, beta1, beta2, eps, weight_decay, momentum_decay, mu_product, grad_scale
        int64_t step
        int decoupled_weight_decay, maximize
    ctypedef struct lrcore_radam_hp:
        double lr, beta1, beta2, eps, weight_decay, grad_scale
        int64_t step
        int decoupled_weight_decay, maximize
    ctypedef struct lrcore_lion_hp:
        double lr, beta1, beta2, weight_decay, grad_scale
        int64_t step
        int maximize

    lrcore_sgd_hp lrcore_sgd_defaults(double lr, int64_t step)
    lrcore_adam_hp lrcore_adam_defaults(double lr, int64_t step)
    lrcore_adagrad_hp lrcore_adagrad_defaults(double lr, int64_t step)
    lrcore_rmsprop_hp lrcore_rmsprop_defaults(double lr, int64_t step)
    lrcore_adadelta_hp lrcore_adadelta_defaults(double lr, int64_t step)
    lrcore_adamax_hp lrcore_adamax_defaults(double lr, int64_t step)
    lrcore_nadam_hp lrcore_nadam_defaults(double lr, int64_t step)
    lrcore_radam_hp lrcore_radam_defaults(double lr, int64_t step)
    lrcore_lion_hp lrcore_lion_defaults(double lr, int64_t step)
    double lrcore_nadam_mu(double beta1, double momentum_decay, int64_t t)

    void lrcore_sgd_f32(size_t n, float *param, const float *grad, float *momentum_buffer,
                        const lrcore_sgd_hp *hp)
    void lrcore_sgd_f64(size_t n, double *param, const double *grad, double *momentum_buffer,
                        const lrcore_sgd_hp *hp)
    void lrcore_adam_f32(size_t n, float *param, const float *grad, float *exp_avg,
                         float *exp_avg_sq, float *max_exp_avg_sq, const lrcore_adam_hp *hp)
    void lrcore_adam_f64(size_t n, double *param, const double *grad, double *exp_avg,
                         double *exp_avg_sq, double *max_exp_avg_sq, const lrcore_adam_hp *hp)
    void lrcore_adagrad_f32(size_t n, float *param, const float *grad, float *state_sum,
                            const lrcore_adagrad_hp *hp)
    void lrcore_adagrad_f64(size_t n, double *param, const double *grad, double *state_sum,
                            const lrcore_adagrad_hp *hp)
    void lrcore_rmsprop_f32(size_t n, float *param, const float *grad, float *square_avg,
                            float *momentum_buffer, float *grad_avg, const lrcore_rmsprop_hp *hp)
    void lrcore_rmsprop_f64(size_t n, double *param, const double *grad, double *square_avg,
                            double *momentum_buffer, double *grad_avg, const lrcore_rmsprop_hp *hp)
    void lrcore_adadelta_f32(size_t n, float *param, const float *grad, float *square_avg,
                             float *acc_delta, const lrcore_adadelta_hp *hp)
    void lrcore_adadelta_f64(size_t n, double *param, const double *grad, double *square_avg,
                             double *acc_delta, const lrcore_adadelta_hp *hp)
    void lrcore_adamax_f32(size_t n, float *param, const float *grad, float *exp_avg,
                           float *exp_inf, const lrcore_adamax_hp *hp)
    void lrcore_adamax_f64(size_t n, double *param, const double *grad, double *exp_avg,
                           double *exp_inf, const lrcore_adamax_hp *hp)
    void lrcore_nadam_f32(size_t n, float *param, const float *grad, float *exp_avg,
                          float *exp_avg_sq, const lrcore_nadam_hp *hp)
    void lrcore_nadam_f64(size_t n, double *param, const double *grad, double *exp_avg,
                          double *exp_avg_sq, const lrcore_nadam_hp *hp)
    void lrcore_radam_f32(size_t n, float *param, const float *grad, float *exp_avg,
                          float *exp_avg_sq, const lrcore_radam_hp *hp)
    void lrcore_radam_f64(size_t n, double *param, const double *grad, double *exp_avg,
                          double *exp_avg_sq, const lrcore_radam_hp *hp)
    void lrcore_lion_f32(size_t n, float *param, const float *grad, float *exp_avg,
                         const lrcore_lion_hp *hp)
    void lrcore_lion_f64(size_t n, double *param, const double *grad, double *exp_avg,
                         const lrcore_lion_hp *hp)
    double lrcore_sum_squares_f32(size_t n, const float *x)
    double lrcore_sum_squares_f64(size_t n, const double *x)

// qsp: depth-to-space (PyTorch's PixelShuffle) in hls4ml's channels-last layout.
//
// PyTorch (NCHW): out[c][h*r+i][w*r+j] = in[c*r*r + i*r + j][h][w].
// Here (HWC, flat): out[((h*r+i)*W*r + w*r+j)*C_out + c] = in[(h*W+w)*C_in + c*r*r+i*r+j].
// A pure re-indexing: no arithmetic, values cast to res_T (the same type in qsp's configs).
#ifndef NNET_QSP_DEPTH_TO_SPACE_H_
#define NNET_QSP_DEPTH_TO_SPACE_H_

#include "hls_stream.h"
#include "nnet_common.h"

namespace nnet {

struct qsp_depth_to_space_config {
    static const unsigned in_height = 1;
    static const unsigned in_width = 1;
    static const unsigned n_chan_in = 1;
    static const unsigned n_chan_out = 1;
    static const unsigned factor = 1;
};

// ---------------------------------------------------------------- io_parallel
template <class data_T, class res_T, typename CONFIG_T>
void qsp_depth_to_space(data_T data[CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan_in],
                        res_T res[CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan_in]) {
    #pragma HLS INLINE
    const unsigned r = CONFIG_T::factor;
    const unsigned W = CONFIG_T::in_width;
    for (unsigned h = 0; h < CONFIG_T::in_height; h++) {
        for (unsigned w = 0; w < W; w++) {
            for (unsigned i = 0; i < r; i++) {
                for (unsigned j = 0; j < r; j++) {
                    for (unsigned c = 0; c < CONFIG_T::n_chan_out; c++) {
                        #pragma HLS UNROLL
                        res[((h * r + i) * W * r + w * r + j) * CONFIG_T::n_chan_out + c] =
                            (res_T)data[(h * W + w) * CONFIG_T::n_chan_in + c * r * r + i * r + j];
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- io_stream
// Input pixels arrive in raster order, one word per pixel (n_chan_in values); one input row
// is buffered, then the r output rows it produces are written in raster order.
template <class data_T, class res_T, typename CONFIG_T>
void qsp_depth_to_space(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    const unsigned r = CONFIG_T::factor;
    typename data_T::value_type row[CONFIG_T::in_width][CONFIG_T::n_chan_in];
RowLoop:
    for (unsigned h = 0; h < CONFIG_T::in_height; h++) {
    ReadLoop:
        for (unsigned w = 0; w < CONFIG_T::in_width; w++) {
            #pragma HLS PIPELINE
            data_T in = data.read();
            for (unsigned k = 0; k < CONFIG_T::n_chan_in; k++) {
                #pragma HLS UNROLL
                row[w][k] = in[k];
            }
        }
    WriteLoop:
        for (unsigned i = 0; i < r; i++) {
            for (unsigned w = 0; w < CONFIG_T::in_width; w++) {
                for (unsigned j = 0; j < r; j++) {
                    #pragma HLS PIPELINE
                    res_T out;
                    PRAGMA_DATA_PACK(out)
                    for (unsigned c = 0; c < CONFIG_T::n_chan_out; c++) {
                        #pragma HLS UNROLL
                        out[c] = (typename res_T::value_type)row[w][c * r * r + i * r + j];
                    }
                    res.write(out);
                }
            }
        }
    }
}

} // namespace nnet

#endif
